#!/bin/bash
# User data rendered by bake: which image, template and os are in the variables below.
# (bake writes every value as one shell word, so values are set here and used as "$name".)
bake_image=web
bake_template=nginx
bake_os=debian
bake_version=0.1.0
bake_failed_marker=/var/lib/bake/failed
bake_ready_marker=/var/lib/bake/ready
set -Eeuo pipefail
exec > >(tee -a /var/log/bake-userdata.log) 2>&1

# On any failure: say where, and leave a marker so verification reports it at once.
bake_failed() {
  echo "bake: user data failed at line $1: $2" >&2
  install -d -m 0755 "$(dirname "$bake_failed_marker")"
  printf 'line %s: %s\n' "$1" "$2" >"$bake_failed_marker"
}
trap 'bake_failed "$LINENO" "$BASH_COMMAND"' ERR
echo "bake: user data for image $bake_image (template $bake_template, $bake_os, bake $bake_version) started at $(date -u +%FT%TZ)"

# retry TRIES CMD...: runs CMD until it succeeds, at most TRIES times.
# Mirrors and downloads flake; waits grow 2s, 4s, 8s... capped at 30s so a retry never stalls a bake.
retry() {
  local tries=$1 n=1 delay=2
  shift
  until "$@"; do
    if ((n >= tries)); then
      echo "bake: giving up after $n tries: $*" >&2
      return 1
    fi
    echo "bake: try $n of $tries failed: $*; again in ${delay}s" >&2
    sleep "$delay"
    n=$((n + 1))
    delay=$((delay * 2 > 30 ? 30 : delay * 2))
  done
}

# fetch URL FILE: downloads URL to FILE, failing on HTTP errors.
fetch() {
  retry 5 curl --fail --silent --show-error --location --connect-timeout 10 --max-time 600 --output "$2" "$1"
}
export DEBIAN_FRONTEND=noninteractive
pkg_lists_fresh=0

# pkg_install PACKAGE...: installs packages with apt, refreshing the lists once.
pkg_install() {
  if ((pkg_lists_fresh == 0)); then
    retry 5 apt-get update
    pkg_lists_fresh=1
  fi
  retry 5 apt-get install -y --no-install-recommends "$@"
}

# The SSM agent, which bake verifies the image through. Ubuntu's AMIs ship it (as a snap); Debian's
# do not, so it comes from AWS's download location in the instance's region (read with IMDSv2).
# Enabled and started: bake's verification needs it now, instances launched from the image later.
ssm_agent() {
  local unit token region arch deb=/tmp/amazon-ssm-agent.deb
  for unit in amazon-ssm-agent.service snap.amazon-ssm-agent.amazon-ssm-agent.service; do
    if systemctl cat "$unit" >/dev/null 2>&1; then
      echo "bake: the SSM agent is installed ($unit)"
      systemctl enable --now "$unit"
      return 0
    fi
  done
  token=$(retry 5 curl --fail --silent --show-error --max-time 10 -X PUT \
    -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' http://169.254.169.254/latest/api/token)
  region=$(retry 5 curl --fail --silent --show-error --max-time 10 \
    -H "X-aws-ec2-metadata-token: $token" http://169.254.169.254/latest/meta-data/placement/region)
  arch=$(dpkg --print-architecture)
  echo "bake: installing the SSM agent for $region ($arch)"
  fetch "https://s3.$region.amazonaws.com/amazon-ssm-$region/latest/debian_$arch/amazon-ssm-agent.deb" "$deb"
  dpkg -i "$deb"
  rm -f "$deb"
  systemctl enable --now amazon-ssm-agent.service
}
ssm_agent
BAKE_DOCROOT=/var/www/html
page_title='Session Manager workshop'
page_message='Nginx in front of Flask, on a private builder reached only through SSM.'
web_port=80
pkg_install nginx python3-flask gunicorn
rm -f /etc/nginx/sites-enabled/default
web_user=www-data
install -d -m 0755 "$BAKE_DOCROOT"
# The app: it shows the page's title and message, and which instance answered.
install -d -m 0755 /opt/bake-app /etc/bake-app
printf '%s' "$page_title" >/etc/bake-app/title
printf '%s' "$page_message" >/etc/bake-app/message
cat >/opt/bake-app/app.py <<'PY'
"""The page behind nginx: title, message, and the instance that served it; /load burns CPU."""
import hashlib
import html
import pathlib
import socket
import time
import urllib.request

from flask import Flask

app = Flask(__name__)
CONF = pathlib.Path("/etc/bake-app")
IMDS = "http://169.254.169.254/latest"


def instance_id():
    try:
        put = urllib.request.Request(
            IMDS + "/api/token",
            method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"},
        )
        token = urllib.request.urlopen(put, timeout=1).read().decode()
        get = urllib.request.Request(
            IMDS + "/meta-data/instance-id",
            headers={"X-aws-ec2-metadata-token": token},
        )
        return urllib.request.urlopen(get, timeout=1).read().decode()
    except OSError:
        return socket.gethostname()


@app.route("/")
def index():
    title = html.escape((CONF / "title").read_text())
    message = html.escape((CONF / "message").read_text())
    where = html.escape(instance_id())
    return (
        f"<!doctype html>\n<title>{title}</title>\n<h1>{title}</h1>\n"
        f"<p>{message}</p>\n<p>Served by {where}</p>\n"
    )


# The workshop's LOAD TEST: each request hashes for half a second of CPU, so a steady stream of
# them raises the group's average CPU and target tracking adds instances.
LOAD_SECONDS = 0.5


@app.route("/load")
def load():
    end = time.monotonic() + LOAD_SECONDS
    digest, rounds = b"bake", 0
    while time.monotonic() < end:
        digest = hashlib.sha256(digest).digest()
        rounds += 1
    where = html.escape(instance_id())
    return f"<!doctype html>\n<title>load</title>\n<p>{rounds} rounds on {where}</p>\n"
PY
gunicorn=/usr/bin/gunicorn
cat >/etc/systemd/system/bake-app.service <<UNIT
[Unit]
Description=bake sample app (gunicorn)
After=network.target

[Service]
User=$web_user
WorkingDirectory=/opt/bake-app
ExecStart=$gunicorn --bind 127.0.0.1:8000 --workers 2 app:app
Restart=on-failure

[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable --now bake-app
{
  printf 'server {\n    listen %s default_server;\n' "$web_port"
  cat <<'NGINX'
    root /var/www/html;
    index index.html;
    # Files first (the health page), everything else from the app.
    location / {
        try_files $uri @app;
    }
    location @app {
        proxy_pass http://127.0.0.1:8000;
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
    }
}
NGINX
} >/etc/nginx/conf.d/bake.conf
chown -R "$web_user:$web_user" "$BAKE_DOCROOT"
systemctl enable nginx
systemctl restart nginx

# The very last step: the health page and the readiness marker, so both prove the script finished.
install -d -m 0755 "$(dirname "$bake_ready_marker")"
printf '%s\n' eee19e91081bbfe9b546b3f2aa9fde835644de7ff64325e27cb919095d3bee1c >"$bake_ready_marker.tmp"
mv "$bake_ready_marker.tmp" "$bake_ready_marker"
echo "bake: user data finished at $(date -u +%FT%TZ)"
