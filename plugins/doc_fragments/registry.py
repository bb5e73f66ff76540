# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Options of the modules that talk to a container registry (OCI distribution API)."""


class ModuleDocFragment:
    """How to reach and authenticate to registries."""

    DOCUMENTATION = r"""
options:
  username:
    description:
      - User name for the registry. With O(password); otherwise credentials come from the
        auth file (see O(auth_file)), and without any the registry is used anonymously.
    type: str
  password:
    description:
      - Password or access token for O(username).
    type: str
  auth_file:
    description:
      - A Docker or Podman auth file (C(auths) entries with a base64 C(auth) of
        C(user:password)) to read credentials from.
      - Default is the first of C($REGISTRY_AUTH_FILE),
        C($XDG_RUNTIME_DIR/containers/auth.json), C(~/.config/containers/auth.json) and
        C(~/.docker/config.json) (C($DOCKER_CONFIG/config.json)) that has an entry for the
        registry.
    type: path
  ca_path:
    description:
      - A CA certificate file (PEM), or a directory of C(*.crt) files, trusted in addition to
        the system CAs and to C(/etc/containers/certs.d/HOST/*.crt) and
        C(/etc/docker/certs.d/HOST/*.crt).
    type: path
  insecure_registries:
    description:
      - Registries (C(host) or C(host:port), as written in the image reference) spoken to
        over plain HTTP instead of TLS. Credentials then travel in clear text.
    type: list
    elements: str
    default: []
  retries:
    description:
      - How often a request that failed on the network, or with HTTP 429 or 5xx, is retried
        (with a growing pause); a broken blob download is resumed as often.
    type: int
    default: 3
  parallel:
    description:
      - How many blobs are transferred at the same time.
    type: int
    default: 4
"""
