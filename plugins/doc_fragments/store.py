# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The O(store) option that every image and container module of lapis.layers takes."""


class ModuleDocFragment:
    """Shared documentation of the image store location."""

    DOCUMENTATION = r"""
options:
  store:
    description:
      - Directory of the image store on the managed host.
      - Its C(oci/) subdirectory is an OCI image layout (readable by C(skopeo) and C(umoci)),
        C(layers/) holds one unpacked layer per chain id, shared by all images and containers.
      - Created on first use.
    type: path
    default: /var/lib/lapis
"""
