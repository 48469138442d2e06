//! `vipgate check` against the configurations in the repository (no root needed): every file
//! in configs/bad/ is refused with exit status 2 and one line per problem its leading lines
//! announce (`# expect: <substring>`, one per problem, in order), and every file in configs/
//! is accepted.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs")
}

/// The `.toml` files of a directory, sorted.
fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

/// `vipgate check --config FILE`, with no `VIPGATE_*` overrides leaking in from the caller's
/// environment.
fn check(file: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vipgate"));
    // The shipped files name the lab's interfaces, which this host need not have.
    cmd.args(["check", "--no-host", "--config"]).arg(file);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("VIPGATE_") {
            cmd.env_remove(k);
        }
    }
    cmd.output().unwrap()
}

#[test]
fn bad_configs_are_refused_with_their_message() {
    let files = toml_files(&configs().join("bad"));
    assert!(!files.is_empty(), "no files in configs/bad");
    let mut failures = Vec::new();
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(file).unwrap();
        let expect: Vec<&str> = text
            .lines()
            .map_while(|l| l.strip_prefix("# expect: "))
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect();
        if expect.is_empty() {
            failures.push(format!("{name}: first line is not `# expect: <substring>`"));
            continue;
        }
        let out = check(file);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let message = stderr.trim_end();
        let lines: Vec<&str> = message.lines().collect();
        let prefix = format!("vipgate: {}: ", file.display());
        if out.status.code() != Some(2) {
            failures.push(format!(
                "{name}: exit status {} (expected 2); stderr: {message}",
                out.status
            ));
        } else if lines.len() != expect.len()
            || lines
                .iter()
                .zip(&expect)
                .any(|(l, e)| !l.starts_with(&prefix) || !l.contains(e))
        {
            failures.push(format!(
                "{name}: expected {} line(s) starting {prefix:?} with {expect:?}; stderr: {message}",
                expect.len()
            ));
        } else if !out.stdout.is_empty() {
            failures.push(format!(
                "{name}: printed on stdout: {}",
                String::from_utf8_lossy(&out.stdout)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad configurations misjudged:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn shipped_configs_are_accepted() {
    let files = toml_files(&configs());
    assert!(
        files.iter().any(|f| f.ends_with("lab.toml")),
        "configs/lab.toml is missing"
    );
    for file in &files {
        let out = check(file);
        assert!(
            out.status.success(),
            "{}: exit status {}; stderr: {}",
            file.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    }
}

#[test]
fn a_missing_file_is_refused() {
    let out = check(&configs().join("bad/does-not-exist.toml"));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("vipgate: "), "{stderr}");
}

#[test]
fn check_says_what_this_host_lacks() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vipgate"));
    cmd.arg("check")
        .arg(format!("--config={}", configs().join("lab.toml").display()));
    cmd.env("VIPGATE_WORKERS__CORES", "4000");
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("workers.cores[0]: CPU 4000 is not available"),
        "{stderr}"
    );
    assert!(stderr.contains("does not exist on this host"), "{stderr}");
}
