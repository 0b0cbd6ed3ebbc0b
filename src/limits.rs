//! The names and sizes AWS accepts for what bake sends, checked before any call: EC2 client tokens,
//! load balancer, target group, launch template and Auto Scaling group names, SSM parameter names,
//! and tags. Each check answers with the rule it enforces.

/// EC2 "Ensuring idempotency": a client token is up to 64 ASCII characters.
pub const CLIENT_TOKEN_MAX: usize = 64;
/// CreateLoadBalancer / CreateTargetGroup: at most 32 alphanumerics or hyphens.
pub const ELB_NAME_MAX: usize = 32;
/// CreateLaunchTemplate: 3 to 128 characters of `[a-zA-Z0-9().\-/_]`.
pub const LAUNCH_TEMPLATE_NAME: std::ops::RangeInclusive<usize> = 3..=128;
/// CreateAutoScalingGroup and CreateSecurityGroup: at most 255 characters.
pub const GROUP_NAME_MAX: usize = 255;
/// Parameter Store: a hierarchy has at most 15 levels.
pub const SSM_LEVELS_MAX: usize = 15;
/// Parameter Store: the name with its ARN (`arn:aws:ssm:REGION:ACCOUNT:parameter`, up to about 60
/// characters) is at most 1011 characters; bake keeps names to 1011 - 64.
pub const SSM_NAME_MAX: usize = 1011 - 64;
/// Tags on EC2, Auto Scaling and ELB resources: 50 per resource, keys up to 128 characters,
/// values up to 256, the `aws:` prefix reserved.
pub const TAGS_MAX: usize = 50;
pub const TAG_KEY_MAX: usize = 128;
pub const TAG_VALUE_MAX: usize = 256;

/// An EC2 client token.
pub fn client_token(token: &str) -> Result<(), String> {
    if !token.is_ascii() {
        return Err(format!(
            "EC2 client tokens are ASCII only, and `{token}` is not"
        ));
    }
    if token.len() > CLIENT_TOKEN_MAX {
        return Err(format!(
            "EC2 client tokens are at most {CLIENT_TOKEN_MAX} characters, `{token}` has {}",
            token.len()
        ));
    }
    Ok(())
}

/// A load balancer's (`load_balancer`) or target group's name.
pub fn elb_name(name: &str, load_balancer: bool) -> Result<(), String> {
    let what = if load_balancer {
        "load balancer"
    } else {
        "target group"
    };
    let rule = format!(
        "{what} names are 1 to {ELB_NAME_MAX} letters, digits or hyphens, not starting or ending \
         with a hyphen{}",
        if load_balancer {
            ", and not starting with `internal-`"
        } else {
            ""
        }
    );
    let bad = name.is_empty()
        || name.len() > ELB_NAME_MAX
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        || name.starts_with('-')
        || name.ends_with('-')
        || (load_balancer && name.starts_with("internal-"));
    if bad {
        Err(format!(
            "{rule}; found `{name}` ({} characters)",
            name.chars().count()
        ))
    } else {
        Ok(())
    }
}

/// A launch template's name.
pub fn launch_template_name(name: &str) -> Result<(), String> {
    let ok = LAUNCH_TEMPLATE_NAME.contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "().-/_".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "launch template names are {} to {} characters of letters, digits and ().-/_; found `{name}`",
            LAUNCH_TEMPLATE_NAME.start(),
            LAUNCH_TEMPLATE_NAME.end()
        ))
    }
}

/// An Auto Scaling group's or security group's name.
pub fn group_name(name: &str, what: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().count() > GROUP_NAME_MAX {
        return Err(format!(
            "{what} names are 1 to {GROUP_NAME_MAX} characters; found {}",
            name.chars().count()
        ));
    }
    if what == "security group" && name.to_ascii_lowercase().starts_with("sg-") {
        return Err(format!(
            "security group names cannot start with `sg-`; found `{name}`"
        ));
    }
    Ok(())
}

/// One level of an SSM parameter hierarchy (what bake puts between slashes).
pub fn ssm_name_part(part: &str) -> Result<(), String> {
    if !part.is_empty()
        && part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    {
        Ok(())
    } else {
        Err(format!(
            "SSM parameter names are letters, digits and _.- between slashes; `{part}` is not"
        ))
    }
}

/// An SSM parameter name (or ARN, taken as it is).
pub fn ssm_parameter_name(name: &str) -> Result<(), String> {
    if name.starts_with("arn:") {
        return Ok(());
    }
    if name.contains('/') && !name.starts_with('/') {
        return Err(format!(
            "an SSM parameter name with a hierarchy starts with `/`; found `{name}`"
        ));
    }
    let levels: Vec<&str> = name.trim_start_matches('/').split('/').collect();
    for level in &levels {
        ssm_name_part(level).map_err(|e| format!("{e} (in `{name}`)"))?;
    }
    if levels.len() > SSM_LEVELS_MAX {
        return Err(format!(
            "SSM parameter hierarchies have at most {SSM_LEVELS_MAX} levels; `{name}` has {}",
            levels.len()
        ));
    }
    if name.len() > SSM_NAME_MAX {
        return Err(format!(
            "SSM parameter names are at most {SSM_NAME_MAX} characters here (1011 with the ARN); \
             found {}",
            name.len()
        ));
    }
    Ok(())
}

/// One resource's tags; `reserved` is how many more bake adds itself.
pub fn tags<'a>(
    tags: impl IntoIterator<Item = (&'a str, &'a str)>,
    reserved: usize,
) -> Result<(), String> {
    let mut count = reserved;
    for (key, value) in tags {
        count += 1;
        if key.is_empty() || key.chars().count() > TAG_KEY_MAX {
            return Err(format!(
                "tag keys are 1 to {TAG_KEY_MAX} characters; `{key}` has {}",
                key.chars().count()
            ));
        }
        if value.chars().count() > TAG_VALUE_MAX {
            return Err(format!(
                "tag values are at most {TAG_VALUE_MAX} characters; the value of `{key}` has {}",
                value.chars().count()
            ));
        }
        if key.to_ascii_lowercase().starts_with("aws:") {
            return Err(format!(
                "tag keys starting with `aws:` are reserved for AWS; found `{key}`"
            ));
        }
    }
    if count > TAGS_MAX {
        return Err(format!(
            "a resource has at most {TAGS_MAX} tags, and bake adds {reserved} of its own; found {}",
            count - reserved
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_tokens_are_64_ascii_characters_at_most() {
        assert!(client_token(&"t".repeat(64)).is_ok());
        assert!(client_token(&"t".repeat(65)).unwrap_err().contains("64"));
        assert!(client_token("jeton-é").is_err());
    }

    #[test]
    fn elb_names_follow_the_rules() {
        assert!(elb_name(&"a".repeat(32), true).is_ok());
        for bad in ["", "-web", "web-", "web_1", "internal-web"] {
            assert!(elb_name(bad, true).is_err(), "{bad}");
        }
        assert!(elb_name(&"a".repeat(33), false).is_err());
        assert!(elb_name("internal-web", false).is_ok());
    }

    #[test]
    fn ssm_names_follow_the_rules() {
        assert!(ssm_parameter_name("/bake/web_app-1.2/ami-id").is_ok());
        assert!(ssm_parameter_name("plain").is_ok());
        assert!(ssm_parameter_name("bake/web").is_err());
        assert!(ssm_parameter_name("/bake/web app").is_err());
        let deep: String = (0..16).map(|i| format!("/l{i}")).collect();
        assert!(ssm_parameter_name(&deep).unwrap_err().contains("15"));
        assert!(ssm_parameter_name(&deep[..deep.rfind('/').unwrap()]).is_ok());
    }

    #[test]
    fn tags_follow_the_rules() {
        let fine = [("Name", "web")];
        assert!(tags(fine, 1).is_ok());
        let many: Vec<(String, String)> = (0..50).map(|i| (format!("k{i}"), "v".into())).collect();
        let refs = many.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        assert!(tags(refs.clone(), 0).is_ok());
        assert!(tags(refs, 1).unwrap_err().contains("50"));
        assert!(tags([("aws:x", "v")], 0).is_err());
        let long = "k".repeat(129);
        assert!(tags([(long.as_str(), "v")], 0).is_err());
        let value = "v".repeat(257);
        assert!(tags([("k", value.as_str())], 0).is_err());
    }
}
