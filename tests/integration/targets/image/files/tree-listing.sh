#!/bin/sh
# One line per entry below $1, sorted by path: path, type, mode, owner, link count, then
# the content's sha256 (files), the link target (symlinks) or major:minor (devices).
# Used to compare image_unpack format=flat with umoci unpack.
set -eu
cd "$1"
find . -mindepth 1 | LC_ALL=C sort | while IFS= read -r entry; do
    if [ -L "$entry" ]; then
        extra=$(readlink -- "$entry")
    elif [ -f "$entry" ]; then
        extra=$(sha256sum <"$entry" | cut -d ' ' -f 1)
    elif [ -c "$entry" ] || [ -b "$entry" ]; then
        extra=$(stat -c '%t:%T' -- "$entry")
    else
        extra=-
    fi
    printf '%s %s\n' "$(stat -c '%n|%F|%a|%u:%g|%h' -- "$entry")" "$extra"
done
