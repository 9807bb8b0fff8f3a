//! The container's root file system as the layers build it up: directories, regular files and symbolic links in
//! memory, in name order. Paths are resolved as a container runtime does inside the root: a symbolic link on the way
//! is followed within the tree (an absolute target from the tree's root, `..` stopping at the root), never on the
//! host, so no entry can reach outside the tree.

use std::collections::BTreeMap;

/// Symbolic links followed in one lookup before it is a loop (Linux's limit).
const MAX_LINKS_FOLLOWED: usize = 40;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Dir { mode: u32, children: BTreeMap<String, Node> },
    File { mode: u32, data: Vec<u8> },
    Symlink { target: String },
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    #[error("{0} is not a directory")]
    NotDir(String),
    #[error("too many levels of symbolic links at {0}")]
    Loop(String),
    #[error("no such file or directory: {0}")]
    Missing(String),
}

/// A resolved path: the names from the root, no link, `.` or `..` among them.
pub type Components = Vec<String>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tree {
    pub root: Node,
}

impl Default for Tree {
    fn default() -> Self {
        Tree { root: Node::Dir { mode: 0o755, children: BTreeMap::new() } }
    }
}

/// `path`'s components, without empty ones and `.`; `..` is kept for the lookup to apply.
pub fn split(path: &str) -> impl DoubleEndedIterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty() && *c != ".")
}

pub fn join(components: &[String]) -> String {
    format!("/{}", components.join("/"))
}

impl Tree {
    /// The node at `components` exactly (no link followed).
    pub fn get(&self, components: &[String]) -> Option<&Node> {
        components.iter().try_fold(&self.root, |node, name| match node {
            Node::Dir { children, .. } => children.get(name),
            _ => None,
        })
    }

    fn get_mut(&mut self, components: &[String]) -> Option<&mut Node> {
        components.iter().try_fold(&mut self.root, |node, name| match node {
            Node::Dir { children, .. } => children.get_mut(name),
            _ => None,
        })
    }

    /// Resolves `path` inside the tree: every link on the way is followed, and the last component's too if
    /// `follow_last`. Missing components are kept as they are: the result is where the entry is or would be.
    pub fn resolve(&self, path: &str, follow_last: bool) -> Result<Components, TreeError> {
        let mut pending: Vec<String> = split(path).rev().map(str::to_string).collect();
        let mut at: Components = Vec::new();
        let mut followed = 0;
        while let Some(name) = pending.pop() {
            if name == ".." {
                at.pop();
                continue;
            }
            at.push(name);
            let last = pending.is_empty();
            match self.get(&at) {
                Some(Node::Symlink { target }) if !last || follow_last => {
                    followed += 1;
                    if followed > MAX_LINKS_FOLLOWED {
                        return Err(TreeError::Loop(join(&at)));
                    }
                    at.pop();
                    if target.starts_with('/') {
                        at.clear();
                    }
                    pending.extend(split(target).rev().map(str::to_string));
                }
                Some(Node::File { .. }) if !last => return Err(TreeError::NotDir(join(&at))),
                _ => {}
            }
        }
        Ok(at)
    }

    /// The directory at `components`, made (with its missing parents, mode 0755) if missing; a file or link in the
    /// way is an error. `components` must be resolved ([`Tree::resolve`]).
    pub fn make_dir(&mut self, components: &[String]) -> Result<&mut BTreeMap<String, Node>, TreeError> {
        let mut node = &mut self.root;
        for (depth, name) in components.iter().enumerate() {
            let Node::Dir { children, .. } = node else { unreachable!("checked on the way down") };
            node = children.entry(name.clone()).or_insert_with(|| Node::Dir { mode: 0o755, children: BTreeMap::new() });
            if !matches!(node, Node::Dir { .. }) {
                return Err(TreeError::NotDir(join(&components[..=depth])));
            }
        }
        match node {
            Node::Dir { children, .. } => Ok(children),
            _ => Err(TreeError::NotDir(join(components))),
        }
    }

    /// Puts `node` at `path` (its parents resolved, and made if missing), replacing what was there; a directory put
    /// over a directory keeps what is in it and takes the new mode, as tar does.
    pub fn insert(&mut self, path: &str, node: Node) -> Result<Components, TreeError> {
        let mut at = self.resolve(path, false)?;
        let Some(name) = at.pop() else {
            if let (Node::Dir { mode, .. }, Node::Dir { mode: new, .. }) = (&mut self.root, node) {
                *mode = new;
            }
            return Ok(at);
        };
        let dir = self.make_dir(&at)?;
        match (dir.get_mut(&name), node) {
            (Some(Node::Dir { mode, .. }), Node::Dir { mode: new, .. }) => *mode = new,
            (_, node) => {
                dir.insert(name.clone(), node);
            }
        }
        at.push(name);
        Ok(at)
    }

    /// Removes the entry at resolved `components` (and everything below it); whether there was one.
    pub fn remove(&mut self, components: &[String]) -> bool {
        let Some((name, parent)) = components.split_last() else { return false };
        match self.get_mut(parent) {
            Some(Node::Dir { children, .. }) => children.remove(name).is_some(),
            _ => false,
        }
    }

    /// Removes everything below the directory at `components` for which `keep` (given each entry's path) is false,
    /// and within the directories kept, the same again.
    pub fn prune(&mut self, components: &[String], keep: &dyn Fn(&[String]) -> bool) {
        let mut path = components.to_vec();
        if let Some(node) = self.get_mut(components) {
            prune_below(node, &mut path, keep);
        }
    }

    /// Every entry in name order, parents before their children, with its absolute path.
    pub fn walk<'a>(&'a self, mut visit: impl FnMut(&str, &'a Node)) {
        fn go<'a>(node: &'a Node, path: &mut String, visit: &mut dyn FnMut(&str, &'a Node)) {
            if let Node::Dir { children, .. } = node {
                for (name, child) in children {
                    let len = path.len();
                    path.push('/');
                    path.push_str(name);
                    visit(path, child);
                    go(child, path, visit);
                    path.truncate(len);
                }
            }
        }
        go(&self.root, &mut String::new(), &mut visit);
    }

    /// The regular file `path` leads to, links followed; its resolved path too.
    pub fn file(&self, path: &str) -> Result<(Components, u32, &[u8]), TreeError> {
        let at = self.resolve(path, true)?;
        match self.get(&at) {
            Some(Node::File { mode, data }) => Ok((at, *mode, data)),
            Some(_) => Err(TreeError::Missing(format!("{path} (not a regular file)"))),
            None => Err(TreeError::Missing(path.to_string())),
        }
    }
}

fn prune_below(node: &mut Node, path: &mut Vec<String>, keep: &dyn Fn(&[String]) -> bool) {
    let Node::Dir { children, .. } = node else { return };
    children.retain(|name, _| {
        path.push(name.clone());
        let kept = keep(path);
        path.pop();
        kept
    });
    for (name, child) in children.iter_mut() {
        path.push(name.clone());
        prune_below(child, path, keep);
        path.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(data: &str) -> Node {
        Node::File { mode: 0o644, data: data.as_bytes().to_vec() }
    }

    fn link(target: &str) -> Node {
        Node::Symlink { target: target.into() }
    }

    #[test]
    fn links_on_the_way_are_followed_inside_the_tree() {
        let mut t = Tree::default();
        t.insert("usr/lib/libc.so", file("c")).unwrap();
        t.insert("lib", link("usr/lib")).unwrap();
        t.insert("lib64", link("/usr/lib")).unwrap();
        t.insert("escape", link("../../../../usr")).unwrap();
        // Writing through /lib lands in /usr/lib, as in a container, not in a host directory.
        assert_eq!(t.insert("lib/libm.so", file("m")).unwrap(), ["usr", "lib", "libm.so"]);
        assert_eq!(t.file("/lib64/libm.so").unwrap().2, b"m");
        // `..` above the root stays at the root.
        assert_eq!(t.file("/escape/lib/libc.so").unwrap().0, ["usr", "lib", "libc.so"]);
        assert_eq!(t.resolve("/a/../../usr/x", false).unwrap(), ["usr", "x"]);
        // The last link is followed only when asked.
        assert_eq!(t.resolve("/lib", false).unwrap(), ["lib"]);
        assert_eq!(t.resolve("/lib", true).unwrap(), ["usr", "lib"]);
    }

    #[test]
    fn loops_and_files_in_the_way_are_errors() {
        let mut t = Tree::default();
        t.insert("a", link("b")).unwrap();
        t.insert("b", link("a")).unwrap();
        t.insert("f", file("x")).unwrap();
        assert_eq!(t.resolve("/a/x", false).unwrap_err(), TreeError::Loop("/a".into()));
        assert_eq!(t.insert("f/x", file("y")).unwrap_err(), TreeError::NotDir("/f".into()));
    }

    #[test]
    fn a_directory_over_a_directory_keeps_its_contents() {
        let mut t = Tree::default();
        t.insert("etc/passwd", file("root")).unwrap();
        t.insert("etc", Node::Dir { mode: 0o700, children: BTreeMap::new() }).unwrap();
        let mut seen = Vec::new();
        t.walk(|p, n| seen.push((p.to_string(), matches!(n, Node::Dir { mode: 0o700, .. }))));
        assert_eq!(seen, [("/etc".to_string(), true), ("/etc/passwd".to_string(), false)]);
        assert!(t.remove(&["etc".into()]));
        assert!(t.get(&["etc".into(), "passwd".into()]).is_none());
    }
}
