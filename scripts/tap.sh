# shellcheck shell=bash
# The test-report helpers the e2e scripts share: `ok NAME`, `not_ok NAME [DETAILS]`,
# counted in PASSED and FAILED (one `ok - …` / `not ok - …` line each).
PASSED=0
FAILED=0

ok() {
    PASSED=$((PASSED + 1))
    echo "ok - $1"
}

not_ok() {
    FAILED=$((FAILED + 1))
    echo "not ok - $1"
    if [[ -n "${2:-}" ]]; then
        # shellcheck disable=SC2001 # prefix every line of a multi-line text
        sed 's/^/    # /' <<<"$2"
    fi
}
