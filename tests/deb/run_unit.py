"""Starts a systemd service unit's ExecStart the way systemd would, on a
machine where systemd is not PID 1 (CI containers): scripts/deb-test.sh uses
it to start the units the Debian package installed.

What it applies, as systemd.exec(5) and systemd.service(5) define them:
- `%i` / `%I` (the instance of a template unit), `%%`;
- Environment= (in order, several assignments per line, quotes), then
  EnvironmentFile= (a leading `-` means optional), later ones winning;
- ExecStart= word splitting: `${VAR}` expands inside a word, a word that is
  exactly `$VAR` expands to the value split at whitespace (none when empty);
- User= / Group= (setpriv drops to them), StateDirectory= (created under
  /var/lib, owned by User=, StateDirectoryMode=), UMask=.
Anything else in the unit (sandboxing) is left to `systemd-analyze verify`.

usage: run_unit.py UNIT_FILE INSTANCE_OR_- CMDFILE
Writes the expanded command line to CMDFILE, then becomes the service
process (exec), so the caller waits for it and sees its exit status.
"""
import os
import pwd
import grp
import re
import shlex
import sys


def read_unit(path):
    service, section = [], None
    for raw in open(path):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        if section == "Service":
            key, _, value = line.partition("=")
            service.append((key.strip(), value.strip()))
    return service


def specifiers(value, instance):
    return re.sub(r"%([%iI])", lambda m: "%" if m.group(1) == "%" else instance, value)


def environment_file(path, env):
    for raw in open(path):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, _, value = line.partition("=")
        words = shlex.split(value, comments=False, posix=True)
        env[key.strip()] = " ".join(words) if words else ""


def expand_exec(command, env):
    args = []
    for word in shlex.split(command, posix=True):
        whole = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if whole:
            args.extend(env.get(whole.group(1), "").split())
        else:
            args.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m.group(1), ""), word))
    return args


def main(unit_path, instance, cmdfile):
    instance = "" if instance == "-" else instance
    service = read_unit(unit_path)
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    settings = {}
    for key, value in service:
        value = specifiers(value, instance)
        if key == "Environment":
            for assignment in shlex.split(value, posix=True):
                name, _, val = assignment.partition("=")
                env[name] = val
        elif key == "EnvironmentFile":
            optional = value.startswith("-")
            path = value.lstrip("-")
            if os.path.exists(path):
                environment_file(path, env)
            elif not optional:
                sys.exit(f"{unit_path}: EnvironmentFile {path} is missing (systemd would refuse to start)")
        else:
            settings[key] = value
    user = settings.get("User", "root")
    group = settings.get("Group") or grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
    uid, gid = pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid
    for state in settings.get("StateDirectory", "").split():
        path = os.path.join("/var/lib", state)
        os.makedirs(path, exist_ok=True)
        os.chmod(path, int(settings.get("StateDirectoryMode", "0755"), 8))
        os.chown(path, uid, gid)
    args = expand_exec(settings["ExecStart"].lstrip("-@:+!"), env)
    env.update({"USER": user, "HOME": pwd.getpwnam(user).pw_dir})
    os.umask(int(settings.get("UMask", "0022"), 8))
    os.chdir("/")
    with open(cmdfile, "w") as f:
        f.write(" ".join(shlex.quote(a) for a in args) + "\n")
    os.execvpe("setpriv", ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--init-groups", "--"] + args, env)


if __name__ == "__main__":
    main(*sys.argv[1:])
