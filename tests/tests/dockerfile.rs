//! deploy/Dockerfile, checked without a container engine: its build steps
//! are the ones CI runs (`cargo xtask`, which provisions the toolchain and
//! builds), the runtime stage takes the binary from where `cargo xtask build`
//! puts it, and the image's entry point is what the DaemonSet expects.
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// One Dockerfile instruction: keyword (upper case) and its arguments, with
/// continuation lines joined and comments dropped.
#[derive(Debug)]
struct Instruction {
    keyword: String,
    args: String,
}

fn parse(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(part) => current += &format!("{} ", part.trim()),
            None => {
                current += t;
                let (k, a) = current
                    .split_once(char::is_whitespace)
                    .unwrap_or((current.as_str(), ""));
                out.push(Instruction {
                    keyword: k.to_uppercase(),
                    args: a.trim().to_string(),
                });
                current.clear();
            }
        }
    }
    out
}

/// The instructions of each stage, by stage name (the `AS` name).
fn stages(ins: &[Instruction]) -> Vec<(String, Vec<&Instruction>)> {
    let mut out: Vec<(String, Vec<&Instruction>)> = Vec::new();
    for i in ins {
        if i.keyword == "FROM" {
            let words: Vec<&str> = i.args.split_whitespace().collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => name.to_string(),
                _ => format!("stage{}", out.len()),
            };
            out.push((name, vec![i]));
        } else {
            out.last_mut()
                .expect("an instruction before FROM")
                .1
                .push(i);
        }
    }
    out
}

fn dockerfile() -> Vec<Instruction> {
    parse(&std::fs::read_to_string(repo().join("deploy/Dockerfile")).expect("deploy/Dockerfile"))
}

#[test]
fn the_builder_runs_the_commands_ci_runs() {
    let ins = dockerfile();
    let st = stages(&ins);
    assert!(
        st.len() >= 2,
        "multi-stage: {:?}",
        st.iter().map(|s| &s.0).collect::<Vec<_>>()
    );
    let (_, builder) = st
        .iter()
        .find(|(n, _)| n == "builder")
        .expect("a stage named builder");
    let runs: Vec<&str> = builder
        .iter()
        .filter(|i| i.keyword == "RUN")
        .map(|i| i.args.as_str())
        .collect();

    // CI's entry point builds and tests through `cargo xtask`, whose
    // provisioning (rust-src, bpf-linker on the nightly's LLVM) every build
    // command runs first; the image builds through it too, never around it.
    let ci = std::fs::read_to_string(repo().join(".ci/run")).expect(".ci/run");
    assert!(
        ci.lines().any(|l| l.trim().starts_with("cargo xtask ")),
        "CI runs cargo xtask:\n{ci}"
    );
    assert!(
        runs.contains(&"cargo xtask build"),
        "the builder runs `cargo xtask build`: {runs:?}"
    );
    for r in &runs {
        let direct = r.split("&&").any(|c| {
            let w: Vec<&str> = c.split_whitespace().collect();
            w.first() == Some(&"cargo") && w.get(1) != Some(&"xtask")
                || w.first() == Some(&"bpf-linker")
        });
        assert!(!direct, "a build step that bypasses xtask: {r}");
    }
    // xtask provisions the nightly pinned in lb-ebpf/rust-toolchain.toml;
    // the image installs no other.
    let provision = std::fs::read_to_string(repo().join("xtask/src/provision.rs")).unwrap();
    assert!(
        provision.contains("lb-ebpf/rust-toolchain.toml") && provision.contains("\"toolchain\", \"install\""),
        "xtask no longer installs the pinned toolchain"
    );
    assert!(
        !runs.iter().any(|r| r.contains("rustup toolchain install nightly")),
        "the builder installs a nightly besides the pinned one: {runs:?}"
    );
    // `cargo xtask build` is `provision` + a release build of lb-agent.
    let xtask = std::fs::read_to_string(repo().join("xtask/src/main.rs")).unwrap();
    assert!(
        xtask.contains(r#"cargo(&["build", "--release", "-p", "lb-agent"])"#),
        "xtask build no longer builds target/release/lb-agent: update deploy/Dockerfile"
    );
    assert!(
        builder
            .iter()
            .any(|i| i.keyword == "COPY" && i.args == ". ."),
        "the whole workspace is the build's input"
    );
}

#[test]
fn the_runtime_image_holds_only_the_binary_and_runs_it() {
    let ins = dockerfile();
    let st = stages(&ins);
    let (_, runtime) = st.last().unwrap();
    let from = runtime[0].args.split_whitespace().next().unwrap();
    assert!(
        from.starts_with("gcr.io/distroless/cc") || from.starts_with("debian:bookworm-slim"),
        "a small glibc runtime: {from}"
    );
    let copies: Vec<&str> = runtime
        .iter()
        .filter(|i| i.keyword == "COPY")
        .map(|i| i.args.as_str())
        .collect();
    assert_eq!(
        copies,
        ["--from=builder /src/target/release/lb-agent /usr/local/bin/lb-agent"],
        "the release binary only, where `lb-agent install` puts it on a plain node"
    );
    assert!(
        !runtime.iter().any(|i| i.keyword == "RUN"),
        "nothing runs in the runtime stage"
    );
    let entry = runtime
        .iter()
        .rfind(|i| i.keyword == "ENTRYPOINT")
        .expect("ENTRYPOINT");
    let entry: Vec<String> = serde_json::from_str(&entry.args).expect("exec-form ENTRYPOINT");
    assert_eq!(
        entry,
        ["/usr/local/bin/lb-agent"],
        "the DaemonSet passes `run ...` as args"
    );
    // The port the image documents is the agent's metrics port.
    let port = lb_agent::ops::http::DEFAULT_METRICS_ADDR
        .rsplit(':')
        .next()
        .unwrap();
    assert!(runtime
        .iter()
        .any(|i| i.keyword == "EXPOSE" && i.args == port));
}

#[test]
fn build_output_stays_out_of_the_context() {
    let ignore = std::fs::read_to_string(repo().join(".dockerignore"))
        .expect(".dockerignore at the context root");
    assert!(ignore.lines().any(|l| l.trim() == "target/"), "{ignore}");
}
