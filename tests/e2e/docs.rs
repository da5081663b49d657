//! The docs that describe the code stay true: README's crate picture
//! against the `Cargo.toml` files.

use std::collections::BTreeSet;
use std::path::Path;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `sniroute-*` crates in the `[dependencies]` table of a manifest (normal
/// dependencies only; dev-dependencies are for tests).
fn our_dependencies(manifest: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(manifest).unwrap();
    let mut out = BTreeSet::new();
    let mut in_deps = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps {
            if let Some(rest) = line.strip_prefix("sniroute-") {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                out.insert(name.trim_end_matches(".workspace").to_owned());
            }
        }
    }
    out
}

/// The package name of a manifest, without `sniroute-`.
fn package_name(manifest: &Path) -> String {
    let text = std::fs::read_to_string(manifest).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("name = "))
        .unwrap_or_else(|| panic!("{} has no name", manifest.display()));
    let name = line.trim_start_matches("name = ").trim_matches('"');
    name.strip_prefix("sniroute-").unwrap_or(name).to_owned()
}

/// The edges of README's `%% crates` diagram, as (from, to).
fn readme_edges() -> BTreeSet<(String, String)> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme
        .find("%% crates")
        .expect("README has a crate diagram marked `%% crates`");
    let block = &readme[start..readme[start..].find("```").unwrap() + start];
    let node = |s: &str| -> String { s.trim().split(['[', ' ']).next().unwrap().trim().to_owned() };
    block
        .lines()
        .filter_map(|l| {
            let (from, to) = l.split_once("-->").or_else(|| {
                let (from, rest) = l.split_once("-.")?;
                let (_, to) = rest.split_once(".->")?;
                Some((from, to))
            })?;
            Some((node(from), node(to)))
        })
        .collect()
}

#[test]
fn the_readme_crate_picture_matches_the_manifests() {
    let _turn = crate::common::light();
    let mut manifests = vec![repo().join("Cargo.toml")];
    for dir in std::fs::read_dir(repo().join("crates")).unwrap() {
        let dir = dir.unwrap().path();
        for manifest in [dir.join("Cargo.toml"), dir.join("oracle/Cargo.toml")] {
            if manifest.exists() {
                manifests.push(manifest);
            }
        }
    }
    let mut actual = BTreeSet::new();
    let mut crates = BTreeSet::new();
    for manifest in &manifests {
        let name = package_name(manifest);
        crates.insert(name.clone());
        for dep in our_dependencies(manifest) {
            actual.insert((name.clone(), dep));
        }
    }
    let pictured = readme_edges();
    assert_eq!(
        pictured, actual,
        "README's crate diagram differs from the Cargo.toml files"
    );
    let shown: BTreeSet<String> = pictured
        .iter()
        .flat_map(|(a, b)| [a.clone(), b.clone()])
        .collect();
    assert_eq!(shown, crates, "every crate is in the picture");
    // Every crate directory is in the layout table too.
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    for dir in std::fs::read_dir(repo().join("crates")).unwrap() {
        let dir = dir.unwrap().file_name().into_string().unwrap();
        assert!(
            readme.contains(&format!("| `crates/{dir}")),
            "README's layout table lacks crates/{dir}"
        );
    }
}
