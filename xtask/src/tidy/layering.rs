//! Layering: the dependency arrows of ARCHITECTURE.md, checked on the graph of normal
//! (non-dev) dependencies that `cargo tree` prints.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::{FACADE, LIBRARIES, LayeringException, Violation};

/// Normal dependencies as `cargo tree --workspace -e normal --prefix depth` prints them: the
/// members' directories (relative to the root) and the edges between `name vX.Y.Z` nodes.
#[derive(Default)]
pub(super) struct DepGraph {
    pub(super) members: BTreeMap<String, String>,
    pub(super) edges: BTreeMap<String, BTreeSet<String>>,
}

pub(super) fn parse_cargo_tree(text: &str, root: &str) -> DepGraph {
    let mut graph = DepGraph::default();
    let mut stack: Vec<String> = Vec::new();
    for line in text.lines() {
        let digits = line.chars().take_while(char::is_ascii_digit).count();
        let Ok(depth) = line[..digits].parse::<usize>() else { continue };
        let rest = &line[digits..];
        let label = rest.split(' ').take(2).collect::<Vec<_>>().join(" ");
        stack.truncate(depth);
        if let Some(parent) = stack.last() {
            graph.edges.entry(parent.clone()).or_default().insert(label.clone());
        }
        graph.edges.entry(label.clone()).or_default();
        if depth == 0 {
            let dir = rest.split_once(" (").and_then(|(_, dir)| dir.split_once(')')).map_or("", |(dir, _)| dir);
            let dir = dir.strip_prefix(root).unwrap_or(dir).trim_start_matches('/');
            graph.members.insert(crate_name(&label).to_owned(), dir.to_owned());
        }
        stack.push(label);
    }
    graph
}

fn crate_name(label: &str) -> &str {
    label.split(' ').next().unwrap_or(label)
}

/// The shortest chain of crate names from `from` to `to`, when `from` reaches `to` at all.
fn dependency_chain<'a>(graph: &'a DepGraph, from: &str, to: &str) -> Option<Vec<&'a str>> {
    let mut parent: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue: VecDeque<&str> = graph.edges.keys().map(String::as_str).filter(|n| crate_name(n) == from).collect();
    let mut seen: BTreeSet<&str> = queue.iter().copied().collect();
    while let Some(node) = queue.pop_front() {
        for dep in &graph.edges[node] {
            if !seen.insert(dep) {
                continue;
            }
            parent.insert(dep, node);
            if crate_name(dep) == to {
                let mut chain = vec![crate_name(dep)];
                let mut at = dep.as_str();
                while let Some(&up) = parent.get(at) {
                    chain.push(crate_name(up));
                    at = up;
                }
                chain.reverse();
                return Some(chain);
            }
            queue.push_back(dep);
        }
    }
    None
}

/// Check 2: the arrows of ARCHITECTURE.md, over normal (non-dev) dependencies.
pub(super) fn check_layering(graph: &DepGraph, exceptions: &[LayeringException]) -> Vec<Violation> {
    let manifest =
        |name: &str| graph.members.get(name).map_or("Cargo.toml".to_owned(), |dir| format!("{dir}/Cargo.toml"));
    let mut res = Vec::new();
    for name in LIBRARIES.iter().chain([&FACADE, &"xtask"]).filter(|name| !graph.members.contains_key(**name)) {
        res.push(Violation::new(
            "Cargo.toml",
            0,
            format!("`{name}` is not a workspace member: update tidy's layering"),
        ));
    }
    let mut forbidden: Vec<(&str, &str, &str)> = Vec::new();
    for lib in ["pg-bridge", "pglite-fetch"] {
        forbidden.push((lib, "wasmtime", "only pglite-host links wasmtime"));
    }
    for (a, b) in LIBRARIES.iter().flat_map(|a| LIBRARIES.iter().map(move |b| (*a, *b))).filter(|(a, b)| a != b) {
        forbidden.push((a, b, "the libraries do not depend on each other (dev-dependencies may)"));
    }
    for lib in LIBRARIES.iter().chain([&FACADE]) {
        forbidden.push(("xtask", lib, "xtask drives the runtime crates as processes, it does not link them"));
    }
    for member in graph.members.keys().filter(|member| *member != "xtask") {
        forbidden.push((member, "xtask", "xtask is a leaf: nothing depends on it"));
    }
    let mut used = vec![false; exceptions.len()];
    for (from, to, why) in forbidden {
        let Some(chain) = dependency_chain(graph, from, to) else { continue };
        match exceptions.iter().position(|exception| (exception.from, exception.to) == (from, to)) {
            Some(exception) => used[exception] = true,
            None => res.push(Violation::new(&manifest(from), 0, format!("{}: {why}", chain.join(" -> ")))),
        }
    }
    for (exception, _) in exceptions.iter().zip(used).filter(|(_, used)| !used) {
        let message =
            format!("LAYERING_EXCEPTIONS entry {} -> {} is not needed: remove it", exception.from, exception.to);
        res.push(Violation::new(&manifest(exception.from), 0, message));
    }
    for exception in exceptions.iter().filter(|exception| exception.reason.trim().is_empty()) {
        let message = format!("LAYERING_EXCEPTIONS entry {} -> {} gives no reason", exception.from, exception.to);
        res.push(Violation::new(&manifest(exception.from), 0, message));
    }
    let direct = |from: &str, to: &str| {
        graph.edges.iter().any(|(node, deps)| crate_name(node) == from && deps.iter().any(|dep| crate_name(dep) == to))
    };
    for lib in LIBRARIES.iter().filter(|lib| graph.members.contains_key(FACADE) && !direct(FACADE, lib)) {
        res.push(Violation::new(
            &manifest(FACADE),
            0,
            format!("{FACADE} does not depend on {lib}: it wires all three"),
        ));
    }
    res
}
