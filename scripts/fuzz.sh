#!/usr/bin/env bash
# Builds every libFuzzer target in fuzz/ and runs each one for a short, bounded time.
#
# Why this way: cargo-fuzz is the usual driver, but its default address sanitizer needs
# `-Zsanitizer=address`, which only a nightly rustc accepts. The stable toolchain does ship the
# sanitizer runtimes (librustc-stable_rt.asan.a), so RUSTC_BOOTSTRAP=1, set for the fuzz build
# only, lets stable rustc take that flag; measured on rust 1.95: builds and runs, ASan symbols
# present in the binary. ASan matters once targets reach the engine's unsafe code (the
# lock-free table); for safe code the fuzzer still catches every panic. `-a` turns on debug
# assertions so arithmetic overflow on lengths is a crash, not a silent wrap.
# FUZZ_SANITIZER=none builds without a sanitizer and then needs no RUSTC_BOOTSTRAP at all.
# The fuzz package is its own workspace with its own target dir (fuzz/target), so none of this
# touches the main build.
#
# Environment:
#   FUZZ_SECONDS     seconds per target (default 5)
#   FUZZ_SANITIZER   address (default) or none
#   FUZZ_TARGETS     space-separated subset of targets (default: all of `cargo fuzz list`)
#
# Seeds: fuzz/seeds/<target>/ (committed, small) is read but never written; new inputs go to
# fuzz/corpus/<target>/ (git-ignored). A crash or timeout fails the script and prints the
# artifact path under fuzz/artifacts/<target>/.
set -euo pipefail

readonly CARGO_FUZZ_VERSION=0.13.2

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

seconds=${FUZZ_SECONDS:-5}
sanitizer=${FUZZ_SANITIZER:-address}
if ! [[ $seconds =~ ^[1-9][0-9]*$ ]]; then
    echo "fuzz.sh: FUZZ_SECONDS must be a positive whole number of seconds, got '$seconds'" >&2
    exit 2
fi
case $sanitizer in
    address | none) ;;
    *)
        echo "fuzz.sh: FUZZ_SANITIZER must be 'address' or 'none', got '$sanitizer'" >&2
        exit 2
        ;;
esac

installed=$(cargo fuzz --version 2>/dev/null || true)
if [[ $installed != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
    echo "fuzz.sh: installing cargo-fuzz $CARGO_FUZZ_VERSION (found: '${installed:-none}')"
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

bootstrap=
if [[ $sanitizer == address ]]; then
    export RUSTC_BOOTSTRAP=1
    bootstrap="RUSTC_BOOTSTRAP=1 "
fi

# Same flags for build and run, so run finds the build up to date.
fuzz_flags=(--fuzz-dir fuzz --release --debug-assertions --sanitizer "$sanitizer")

if [[ -n ${FUZZ_TARGETS:-} ]]; then
    read -r -a targets <<<"$FUZZ_TARGETS"
else
    mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi
if [[ ${#targets[@]} -eq 0 ]]; then
    echo "fuzz.sh: no fuzz targets found in fuzz/Cargo.toml" >&2
    exit 1
fi

echo "fuzz.sh: building ${#targets[@]} target(s) with sanitizer=$sanitizer"
cargo fuzz build "${fuzz_flags[@]}"

failed=()
for target in "${targets[@]}"; do
    corpus=fuzz/corpus/$target
    artifacts=fuzz/artifacts/$target
    mkdir -p "$corpus" "$artifacts"
    dirs=("$corpus")
    if [[ -d fuzz/seeds/$target ]]; then
        dirs+=("fuzz/seeds/$target")
    fi
    # Marks the start of this run, so only artifacts written by it are reported.
    marker=$(mktemp)
    echo "fuzz.sh: running $target for ${seconds}s (corpus: ${dirs[*]})"
    status=0
    # -timeout bounds one input, so a hang fails within seconds instead of libFuzzer's 20 min.
    cargo fuzz run "${fuzz_flags[@]}" "$target" "${dirs[@]}" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 || status=$?
    if [[ $status -ne 0 ]]; then
        failed+=("$target")
        echo "fuzz.sh: FAILED: $target exited with status $status" >&2
        found=0
        while IFS= read -r artifact; do
            echo "fuzz.sh: crash artifact: $repo_root/$artifact" >&2
            echo "fuzz.sh: reproduce with: ${bootstrap}cargo fuzz run ${fuzz_flags[*]} $target $artifact" >&2
            found=1
        done < <(find "$artifacts" -type f -newer "$marker")
        if [[ $found -eq 0 ]]; then
            echo "fuzz.sh: no artifact was written; see the output above" >&2
        fi
    fi
    rm -f "$marker"
done

if [[ ${#failed[@]} -ne 0 ]]; then
    echo "fuzz.sh: ${#failed[@]} of ${#targets[@]} target(s) failed: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz.sh: all ${#targets[@]} target(s) ran ${seconds}s without a crash"
