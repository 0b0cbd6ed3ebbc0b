"""How the lab changes moto: the wrap/replace/before helpers every service's patches use, and moto's
backends as the lab reads them (the one account, every region)."""

ACCOUNT = "123456789012"  # moto's default account: every client of the lab is in it


def wrap(cls, name: str, after):
    """Replace cls.name by a call to the original followed by after(self, result, *args, **kwargs)."""
    original = getattr(cls, name)

    def patched(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        after(self, result, *args, **kwargs)
        return result

    patched.__wrapped__ = original
    setattr(cls, name, patched)
    return original


def replace(cls, name: str, make):
    """Replace cls.name by make(original)."""
    original = getattr(cls, name)
    patched = make(original)
    patched.__wrapped__ = original
    setattr(cls, name, patched)


def before(cls, name: str, check):
    """Run check(response) before the response method `name` of cls; what it raises becomes the answer. The
    patch goes on the class that defines the method (EC2Response inherits AmisResponse's and the others'), so
    patches other lab modules make to that class later still run."""
    cls = next(c for c in cls.__mro__ if name in c.__dict__)
    original = getattr(cls, name)

    def patched(self):
        check(self)
        return original(self)

    patched.__wrapped__ = original
    setattr(cls, name, patched)


def backends(backend_dict):
    """(region, backend) of every account and region moto has made so far."""
    for account in list(dict.values(backend_dict)):
        yield from list(dict.items(account))
