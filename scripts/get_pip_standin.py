"""Local stand-in for the get-pip bootstrap script that ansible-test downloads.

ansible-test fetches ``get-pip-<version>.py`` from a host that machines without
general internet access cannot reach. This stand-in is copied to the cache path
ansible-test looks in first; it installs pip with ``ensurepip`` and then installs
the pinned packages ansible-test asked for (``pip==X``) from the package index.
"""

import subprocess
import sys

IGNORED = {"--no-setuptools", "--no-wheel"}


def main() -> None:
    args = [arg for arg in sys.argv[1:] if arg not in IGNORED]
    subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"])
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", *args])


if __name__ == "__main__":
    main()
