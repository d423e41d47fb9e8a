//! Packet fixtures: data files of {name, description, input frame, expected
//! verdict, expected output frame}, run one by one through
//! `BPF_PROG_TEST_RUN`. Cases of a file run in order against the same maps,
//! so a file can tell a story (SYN, then the established flow, then the reply).
use aya::programs::{Program, TestRun, TestRunOptions};
use serde::{Deserialize, Serialize};

use crate::packet::{from_hex, hex_diff, to_hex, verify_checksums};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Case {
    pub name: String,
    pub description: String,
    /// Program to run: `xdp_lb`, `tc_ingress` or `tc_egress`.
    pub program: String,
    /// Input frame, hex.
    pub input: String,
    /// Verdict name: XDP_PASS, XDP_DROP, TC_ACT_OK, TC_ACT_SHOT.
    pub expect: String,
    /// Expected output frame, hex; absent when it must equal the input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

impl Case {
    pub fn new(
        name: &str,
        description: &str,
        program: &str,
        input: &[u8],
        expect: &str,
        output: Option<&[u8]>,
    ) -> Self {
        Self {
            name: name.into(),
            description: description.into(),
            program: program.into(),
            input: to_hex(input),
            expect: expect.into(),
            output: output.map(to_hex),
        }
    }
}

fn verdict_name(program: &str, rc: u32) -> String {
    let xdp = [
        "XDP_ABORTED",
        "XDP_DROP",
        "XDP_PASS",
        "XDP_TX",
        "XDP_REDIRECT",
    ];
    if program.starts_with("xdp") {
        xdp.get(rc as usize)
            .map_or(format!("XDP_{rc}"), |s| s.to_string())
    } else {
        match rc as i32 {
            0 => "TC_ACT_OK".into(),
            2 => "TC_ACT_SHOT".into(),
            7 => "TC_ACT_REDIRECT".into(),
            -1 => "TC_ACT_UNSPEC".into(),
            n => format!("TC_ACT_{n}"),
        }
    }
}

/// Runs `frame` once through `program`; returns the return value and the
/// output frame.
pub fn run_frame(ebpf: &aya::Ebpf, program: &str, frame: &[u8]) -> Result<(u32, Vec<u8>), String> {
    run_frame_on(ebpf, program, frame, None)
}

/// As [`run_frame`]; an XDP program sees `frame` as arriving on
/// `ingress_ifindex` (an interface of the calling thread's network
/// namespace, whose routes and neighbours a FIB lookup then sees; other
/// programs ignore it).
pub fn run_frame_on(ebpf: &aya::Ebpf, program: &str, frame: &[u8], ingress_ifindex: Option<u32>) -> Result<(u32, Vec<u8>), String> {
    let mut out = vec![0u8; frame.len() + 256];
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
    // rx_queue_index, egress_ifindex; the kernel wants data_end = the frame's length.
    let xdp = matches!(ebpf.program(program), Some(Program::Xdp(_)));
    let ingress_ifindex = ingress_ifindex.filter(|_| xdp);
    let ctx: Vec<u8> = ingress_ifindex
        .map(|i| [0u32, frame.len() as u32, 0, i, 0, 0].iter().flat_map(|w| w.to_ne_bytes()).collect())
        .unwrap_or_default();
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: ingress_ifindex.map(|_| ctx.as_slice()),
        ..Default::default()
    };
    let res = match ebpf.program(program) {
        Some(Program::Xdp(p)) => p.test_run(opts),
        Some(Program::SchedClassifier(p)) => p.test_run(opts),
        _ => return Err(format!("no program {program}")),
    }
    .map_err(|e| format!("BPF_PROG_TEST_RUN of {program}: {e:?}"))?;
    out.truncate(res.data_size_out as usize);
    Ok((res.return_value, out))
}

/// Runs one case; `Err` holds a description with a hex diff.
pub fn run(ebpf: &aya::Ebpf, case: &Case) -> Result<(), String> {
    run_on(ebpf, case, None)
}

/// As [`run`], without verifying the output's checksums: for a case whose
/// output must keep the corrupt checksum its input came with.
pub fn run_corrupt(ebpf: &aya::Ebpf, case: &Case) -> Result<(), String> {
    compare(ebpf, case, None, false)
}

/// As [`run`], with the frame arriving on `ingress_ifindex` (see [`run_frame_on`]).
pub fn run_on(ebpf: &aya::Ebpf, case: &Case, ingress_ifindex: Option<u32>) -> Result<(), String> {
    compare(ebpf, case, ingress_ifindex, true)
}

/// Runs `case`: verdict and output bytes, and the output's checksums if `verify`.
fn compare(ebpf: &aya::Ebpf, case: &Case, ingress_ifindex: Option<u32>, verify: bool) -> Result<(), String> {
    let input = from_hex(&case.input);
    let (rc, out) =
        run_frame_on(ebpf, &case.program, &input, ingress_ifindex).map_err(|e| format!("{}: {e}", case.name))?;
    let got = verdict_name(&case.program, rc);
    let fail = |what: String| {
        Err(format!(
            "fixture {} ({}): {what}",
            case.name, case.description
        ))
    };
    if got != case.expect {
        return fail(format!("verdict {got}, expected {}", case.expect));
    }
    let want = case
        .output
        .as_deref()
        .map_or_else(|| input.clone(), from_hex);
    if out != want {
        return fail(format!("output differs\n{}", hex_diff(&out, &want)));
    }
    if verify && case.output.is_some() {
        verify_checksums(&out).or_else(fail)?;
    }
    Ok(())
}

/// Reads a fixture file (a JSON array of cases) from `tests/fixtures/`.
pub fn load(file: &str) -> Vec<Case> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Checks that the fixture file `file` holds `want` (the cases a test
/// builds); with `XDPLB_BLESS=1` rewrites it first.
pub fn check_current(file: &str, want: &[Case]) {
    if std::env::var_os("XDPLB_BLESS").is_some() {
        store(file, want);
    }
    assert_eq!(load(file), want, "tests/fixtures/{file} is stale: rerun with XDPLB_BLESS=1");
}

/// Runs `check` on every case; panics listing each that failed (`what`
/// names the fixture set in the message).
pub fn check_all(what: &str, cases: &[Case], check: impl Fn(&Case) -> Result<(), String>) {
    let failures: Vec<String> = cases.iter().filter_map(|c| check(c).err()).collect();
    assert!(failures.is_empty(), "{} of {} {what} fixtures failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// Writes `cases` as the fixture file `file` (used with `XDPLB_BLESS=1`).
pub fn store(file: &str, cases: &[Case]) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(file);
    std::fs::write(&path, serde_json::to_string_pretty(cases).unwrap() + "\n").unwrap();
}

/// The addresses of the IPv4 service story (tests/fixtures/ipv4_services.json),
/// shared by its fixtures and the fuzzer that mutates them.
pub mod story {
    use std::net::Ipv4Addr;

    pub const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
    pub const POD: Ipv4Addr = Ipv4Addr::new(10, 0, 3, 2);
    pub const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
    pub const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
    pub const DNS_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 53);
    pub const EMPTY_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 99);
    pub const B1: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 11);
    pub const B2: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 12);
}

/// The same story's addresses over IPv6.
pub mod story6 {
    use std::net::Ipv6Addr;

    pub const CLIENT: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
    pub const NODE: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
    pub const CLUSTER_IP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10);
    pub const DNS_IP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x53);
    pub const EMPTY_IP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x99);
    pub const POD: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 3, 0, 0, 0, 0, 2);
    pub const B1: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 2, 0, 0, 0, 0, 0x11);
    pub const B2: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 2, 0, 0, 0, 0, 0x12);
}

/// The input and expected output frames of the case `name` in `file`.
pub fn frames(file: &[Case], name: &str) -> (Vec<u8>, Vec<u8>) {
    let c = file.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no case {name}"));
    (from_hex(&c.input), from_hex(c.output.as_deref().unwrap_or_else(|| panic!("case {name} has no output"))))
}
