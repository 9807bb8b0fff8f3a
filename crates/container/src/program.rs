//! The program a container image runs, found in its own root file system as a container runtime finds it: the
//! command is `Entrypoint` then `Cmd` (or the arguments given instead of `Cmd`); a name without `/` is looked up in
//! the image's `PATH`, a relative path is taken from `WorkingDir`; a script (`#!`) runs its interpreter, as
//! `execve` does, which must be in the image too. Only ELF programs are run: anything else is refused, saying why.

use crate::settings::Settings;
use crate::tree::{join, Tree, TreeError};

/// Interpreters of interpreters followed (Linux allows 4 levels).
const MAX_INTERPRETERS: usize = 4;
/// The longest `#!` line Linux reads.
const MAX_SHEBANG: usize = 256;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProgramError {
    #[error("the image has neither an Entrypoint nor a Cmd: there is no program to run")]
    NoCommand,
    #[error("its program {name:?} is in none of the image's PATH directories ({path})")]
    NotInPath { name: String, path: String },
    #[error("its program {0} is not in the image")]
    Missing(String),
    #[error("its program {path}: {source}")]
    Lookup {
        path: String,
        #[source]
        source: TreeError,
    },
    #[error("its program {0} is not executable (no execute permission bit)")]
    NotExecutable(String),
    #[error("{script} is a script for {interpreter}, which is not in the image: add it to the image, or make the Entrypoint an ELF program")]
    NoInterpreter { script: String, interpreter: String },
    #[error("{0} starts with #! but names no interpreter")]
    EmptyShebang(String),
    #[error("{0}: more than {MAX_INTERPRETERS} levels of #! interpreters")]
    TooManyInterpreters(String),
    #[error("{0} is neither an ELF program nor a script starting with #!; Kiln runs ELF programs")]
    NotElf(String),
}

/// What to run: the ELF file and the arguments it gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program {
    /// The path the program is started by (`argv[0]` and `/proc/self/exe`): as found, links not followed.
    pub path: String,
    /// The file's path with every link followed.
    pub resolved: String,
    /// The arguments after `argv[0]`.
    pub args: Vec<String>,
}

/// The image's program and its arguments; `args`, if given, replaces `Cmd` (as `docker run IMAGE ARGS...` does).
pub fn find(tree: &Tree, settings: &Settings, args: Option<&[String]>) -> Result<Program, ProgramError> {
    let mut command: Vec<String> = settings.entrypoint.clone();
    command.extend(args.map_or_else(|| settings.cmd.clone(), <[String]>::to_vec));
    let Some((name, rest)) = command.split_first() else { return Err(ProgramError::NoCommand) };
    let mut path = locate(tree, settings, name)?;
    let mut args = rest.to_vec();
    for _ in 0..=MAX_INTERPRETERS {
        let (at, mode, data) = tree.file(&path).map_err(|source| match source {
            TreeError::Missing(_) => ProgramError::Missing(path.clone()),
            source => ProgramError::Lookup { path: path.clone(), source },
        })?;
        if mode & 0o111 == 0 {
            return Err(ProgramError::NotExecutable(path));
        }
        if data.starts_with(b"\x7fELF") {
            return Ok(Program { path, resolved: join(&at), args });
        }
        let Some(line) = data.strip_prefix(b"#!") else { return Err(ProgramError::NotElf(path)) };
        let line = &line[..line.len().min(MAX_SHEBANG)];
        let line = String::from_utf8_lossy(line.split(|&b| b == b'\n').next().unwrap_or_default());
        // As Linux: the interpreter, then at most one argument (the rest of the line, spaces and all).
        let line = line.trim_matches([' ', '\t', '\r']);
        let (interpreter, argument) = match line.split_once([' ', '\t']) {
            Some((i, a)) => (i, Some(a.trim_matches([' ', '\t']))),
            None => (line, None),
        };
        if interpreter.is_empty() {
            return Err(ProgramError::EmptyShebang(path));
        }
        if tree.file(interpreter).is_err() {
            return Err(ProgramError::NoInterpreter { script: path, interpreter: interpreter.to_string() });
        }
        let mut new_args: Vec<String> = argument.filter(|a| !a.is_empty()).map(str::to_string).into_iter().collect();
        new_args.push(path);
        new_args.append(&mut args);
        args = new_args;
        path = interpreter.to_string();
    }
    Err(ProgramError::TooManyInterpreters(path))
}

/// Where `name` is: itself if absolute, from the working directory if it has a `/`, else the first executable
/// regular file of that name in `PATH`.
fn locate(tree: &Tree, settings: &Settings, name: &str) -> Result<String, ProgramError> {
    if name.starts_with('/') {
        return Ok(name.to_string());
    }
    if name.contains('/') {
        let workdir = settings.workdir.as_deref().unwrap_or("/");
        return Ok(format!("{}/{name}", workdir.trim_end_matches('/')));
    }
    let path = settings.path();
    path.split(':')
        .filter(|dir| dir.starts_with('/'))
        .map(|dir| format!("{}/{name}", dir.trim_end_matches('/')))
        .find(|candidate| tree.file(candidate).is_ok_and(|(_, mode, _)| mode & 0o111 != 0))
        .ok_or_else(|| ProgramError::NotInPath { name: name.to_string(), path: path.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Node;

    fn tree() -> Tree {
        let mut t = Tree::default();
        let exe = |data: &[u8]| Node::File { mode: 0o755, data: data.to_vec() };
        t.insert("usr/bin/python3.11", exe(b"\x7fELF...")).unwrap();
        t.insert("usr/bin/python3", Node::Symlink { target: "python3.11".into() }).unwrap();
        t.insert("app/run.py", exe(b"#!/usr/bin/python3 -u\nprint(1)\n")).unwrap();
        t.insert("app/run.sh", exe(b"#!/bin/sh\necho hi\n")).unwrap();
        t.insert("app/data", Node::File { mode: 0o644, data: b"\x7fELF".to_vec() }).unwrap();
        t.insert("app/notes", exe(b"hello")).unwrap();
        t
    }

    fn settings(entrypoint: &[&str], cmd: &[&str]) -> Settings {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        Settings {
            entrypoint: strings(entrypoint),
            cmd: strings(cmd),
            workdir: Some("/app".into()),
            ..Default::default()
        }
    }

    #[test]
    fn names_are_found_in_path_and_links_kept_as_the_path() {
        let p = find(&tree(), &settings(&["python3"], &["-c", "pass"]), None).unwrap();
        assert_eq!((p.path.as_str(), p.resolved.as_str()), ("/usr/bin/python3", "/usr/bin/python3.11"));
        assert_eq!(p.args, ["-c", "pass"]);
        let args = ["-V".to_string()];
        assert_eq!(find(&tree(), &settings(&["python3"], &["-c", "pass"]), Some(&args)).unwrap().args, ["-V"]);
    }

    #[test]
    fn scripts_run_their_interpreter_as_execve_does() {
        let p = find(&tree(), &settings(&["./run.py"], &["x"]), None).unwrap();
        assert_eq!(p.path, "/usr/bin/python3");
        assert_eq!(p.args, ["-u", "/app/./run.py", "x"]);
    }

    #[test]
    fn what_cannot_run_is_refused_saying_why() {
        let err = |e: &[&str]| find(&tree(), &settings(e, &[]), None).unwrap_err().to_string();
        assert_eq!(
            err(&["/app/run.sh"]),
            "/app/run.sh is a script for /bin/sh, which is not in the image: add it to the image, or make the Entrypoint an ELF program"
        );
        assert_eq!(err(&["/app/data"]), "its program /app/data is not executable (no execute permission bit)");
        assert_eq!(
            err(&["/app/notes"]),
            "/app/notes is neither an ELF program nor a script starting with #!; Kiln runs ELF programs"
        );
        assert_eq!(err(&["/nope"]), "its program /nope is not in the image");
        assert!(err(&["nope"]).starts_with("its program \"nope\" is in none of the image's PATH directories"));
        assert_eq!(err(&[]), "the image has neither an Entrypoint nor a Cmd: there is no program to run");
    }
}
