//! Stamps the build with its git commit (`TAPEWATCH_COMMIT`) for the
//! reports that record what measured them (`bench --json`). Outside a git
//! checkout (a source tarball, a vendored crate) there is none and reports
//! say so (`null`); packagers may set `TAPEWATCH_COMMIT` themselves.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-env-changed=TAPEWATCH_COMMIT");
    if let Ok(commit) = std::env::var("TAPEWATCH_COMMIT") {
        println!("cargo:rustc-env=TAPEWATCH_COMMIT={commit}");
        return;
    }
    let Some(commit) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        // Not a checkout: nothing to watch, no commit to stamp.
        println!("cargo:rerun-if-changed=build.rs");
        return;
    };
    println!("cargo:rustc-env=TAPEWATCH_COMMIT={commit}");
    // Rebuild when HEAD moves: HEAD itself (a checkout), the branch's ref
    // (a commit) and packed-refs, in the worktree's and the common git dir.
    let git_dir = git(&["rev-parse", "--git-dir"]).map(PathBuf::from);
    let common = git(&["rev-parse", "--git-common-dir"]).map(PathBuf::from);
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    for dir in [git_dir, common].into_iter().flatten() {
        let refs = [Some("HEAD"), Some("packed-refs"), branch.as_deref()];
        // Only files that exist: cargo reruns a script for a missing one every build.
        for path in refs.into_iter().flatten().map(|r| dir.join(r)).filter(|p| p.is_file()) {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}
