# Sourced by the README's two commands: ensure_venv REQUIREMENTS_FILE creates .venv and
# installs the file into it, unless this very file set (and Python) was installed last time,
# so that a second start does not spend seconds asking pip what is already there.
ensure_venv() {
    local req="$1"
    local stamp=".venv/.installed-$(basename "$req").sha256"
    local want
    want="$(cat requirements*.txt | sha256sum | cut -d' ' -f1) $(python3 --version 2>&1)"
    if [ -x .venv/bin/python ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        return 0
    fi
    python3 -m venv .venv
    # Python's own pip installs the pinned wheels: no self-upgrade (which asked every index
    # for a newer pip and warned about each one it could not read), no version nag, no
    # warning for installing as root into a project's own virtual environment.
    .venv/bin/python -m pip install -q --disable-pip-version-check --root-user-action=ignore \
        -r "$req"
    echo "$want" > "$stamp"
}
