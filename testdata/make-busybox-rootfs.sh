#!/bin/sh
# Makes a minimal, reproducible busybox root filesystem from Debian's busybox-static, for
# `kiln import` in the demo and the tests. Usage: make-busybox-rootfs.sh DIR
# BUSYBOX names another busybox binary (the arm64 one `cargo xtask setup` downloads); when the
# host cannot run it, BUSYBOX_EMULATOR (e.g. /usr/bin/qemu-aarch64-static) lists its applets.
set -eu
dir=$1
bb=${BUSYBOX:-/bin/busybox}
emu=${BUSYBOX_EMULATOR:-}
[ -x "$bb" ] || { echo "make-busybox-rootfs: $bb not found: install Debian's busybox-static (\`cargo xtask setup\`)" >&2; exit 1; }
applets=$($emu "$bb" --list)
rm -rf "$dir"
mkdir -p "$dir/bin" "$dir/etc" "$dir/tmp" "$dir/root" "$dir/proc" "$dir/sys" "$dir/dev" "$dir/home" "$dir/var"
cp "$bb" "$dir/bin/busybox"
for applet in $applets; do
    [ "$applet" = busybox ] || ln -s busybox "$dir/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$dir/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$dir/etc/group"
chmod 1777 "$dir/tmp"
chmod 700 "$dir/root"
# Fixed mtimes so the imported layer has the same digest on every machine.
find "$dir" -exec touch -h -d @1700000000 {} +
