# Copyright: lapis.layers contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The FUSE overlay backend: a union filesystem on pyfuse3 with the kernel's on-disk format.

``options`` holds the pure helpers (mount option parsing, whiteout and opaque tests,
state file names), ``unionfs`` the filesystem, ``daemon`` the standalone program that
``mount -t fuse.lapis-overlay`` starts, and ``install`` what a module uses to install
that program on a managed host and to find and stop running daemons.

The files of this package import each other relatively only, so that ``install``
can copy them unchanged to a persistent place on the managed host.
"""
