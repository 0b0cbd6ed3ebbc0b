#!/bin/bash
# User data rendered by bake: which image, template and os are in the variables below.
# (bake writes every value as one shell word, so values are set here and used as "$name".)
bake_image=web
bake_template=lamp
bake_os=al2023
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
# pkg_install PACKAGE...: installs packages with dnf.
pkg_install() {
  retry 5 dnf install -y "$@"
}
BAKE_DOCROOT=/var/www/html
app_url='https://static.us-east-1.prod.workshops.aws/88a8dca7-a449-45ef-8175-384d9646aea5/assets/immersion-day-app-php7.zip?Key-Pair-Id=K36Q2WVO3JP7QD&Policy=eyJTdGF0ZW1lbnQiOlt7IlJlc291cmNlIjoiaHR0cHM6Ly9zdGF0aWMudXMtZWFzdC0xLnByb2Qud29ya3Nob3BzLmF3cy84OGE4ZGNhNy1hNDQ5LTQ1ZWYtODE3NS0zODRkOTY0NmFlYTUvKiJ9XX0__&Signature=oxdOakwik-~DrXY6TGdj9BE3qtNd1Xu~bFlFv8xJnQIyhR5utXjmHtJoqn5mGSXhpTM~G~Q8e~5yQiJBveS2UnCzV-aRevi2t0pblyHeUjMQZKHHEZz8Escn1-s34UA-tO6RjY-glibFWpVIKZC3UB95sxvBbis58dx5CTKtqbAXmnwBFYl3R0vBby6zzYRrOKF2c03o3XLF7Y3foSJnDRRBkxwesCEvgc~7nZVP~px9xOqiwZjqBOdTATZNvigL3G9-vrhk3BGN0M67P4O5YbVzMvf~U-0HDBdwdUIgkWSrfE6y5t8qcHJ0bqd4kPvrVY3P32fti9G5Ocm0UD0dRg__'
pkg_install httpd wget unzip tar php php-fpm php-mysqli php-json php-mbstring php-devel mariadb105-server
systemctl enable --now httpd
web_user=apache
# The app: a zip or a gzipped tarball, unpacked into the document root.
workdir=$(mktemp -d)
fetch "$app_url" "$workdir/app"
if unzip -tq "$workdir/app" >/dev/null 2>&1; then
  unzip -oq "$workdir/app" -d "$BAKE_DOCROOT"
else
  tar -xzf "$workdir/app" -C "$BAKE_DOCROOT"
fi
# The AWS SDK for PHP, where the app expects it.
fetch https://docs.aws.amazon.com/aws-sdk-php/v3/download/aws.zip "$workdir/aws.zip"
install -d "$BAKE_DOCROOT/vendor"
unzip -oq "$workdir/aws.zip" -d "$BAKE_DOCROOT/vendor"
rm -rf "$workdir"
chown -R "$web_user:$web_user" "$BAKE_DOCROOT"

# The very last step: the health page and the readiness marker, so both prove the script finished.
install -d -m 0755 "$(dirname "$bake_ready_marker")"
printf '%s\n' 17dec74a9b7cf933438e7a314884efe557cb76655e870ae69ed3c70a2f340013 >"$bake_ready_marker.tmp"
mv "$bake_ready_marker.tmp" "$bake_ready_marker"
echo "bake: user data finished at $(date -u +%FT%TZ)"
