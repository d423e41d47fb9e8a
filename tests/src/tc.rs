//! tc filters as the `tc` tool shows them: an independent view of what the
//! agent attached through netlink (kernels without TCX, or `--tc-attach
//! netlink`).
use crate::{
    agent::Agent,
    netns::Netns,
    topology::{POD_IFACE, UPLINK},
    wait_for,
};

/// The filters on `iface`'s `hook` (ingress/egress) in `ns`: (program name,
/// program id), one per filter.
pub fn filters(ns: &Netns, iface: &str, hook: &str) -> Vec<(String, u32)> {
    let out = ns.cmd("tc").args(["filter", "show", "dev", iface, hook]).output().expect("running tc");
    parse(&String::from_utf8_lossy(&out.stdout))
}

/// Parses `tc filter show` output; a filter's line reads
/// `filter protocol all pref 1 bpf chain 0 handle 0x4c42 tc_egress direct-action not_in_hw id 42 tag ... jited`.
pub fn parse(text: &str) -> Vec<(String, u32)> {
    text.lines()
        .filter(|l| l.contains(" handle "))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let after = |key: &str, n: usize| w.iter().position(|x| *x == key).and_then(|i| w.get(i + n)).copied().unwrap_or("");
            (after("handle", 2).to_string(), after("id", 1).parse().unwrap_or(0))
        })
        .collect()
}

/// Every hook the agent attaches tc to: (iface, hook, program).
pub const HOOKS: [(&str, &str, &str); 3] =
    [(UPLINK, "egress", "tc_egress"), (POD_IFACE, "ingress", "tc_ingress"), (POD_IFACE, "egress", "tc_egress")];

/// Asserts exactly one filter, of the right program, on every hook; returns
/// their program ids.
pub fn one_filter_each(ns: &Netns, when: &str) -> Vec<u32> {
    HOOKS
        .iter()
        .map(|(iface, hook, prog)| {
            let f = filters(ns, iface, hook);
            assert!(f.len() == 1 && f[0].0 == *prog, "{when}: {iface} {hook} has {f:?}, want one {prog} filter");
            f[0].1
        })
        .collect()
}

/// Waits until the agent's filters carry programs other than `before`
/// (a new agent replaced them).
pub fn replaced(ns: &Netns, before: &[u32], agent: &mut Agent) -> Vec<u32> {
    let ok = wait_for(WAIT, || {
        agent.assert_alive();
        HOOKS.iter().zip(before).all(|((i, h, _), old)| filters(ns, i, h).iter().any(|(_, id)| id != old))
    });
    assert!(ok, "the new agent did not replace its filters within {WAIT:?}:\n{}", agent.log());
    one_filter_each(ns, "after a restart")
}

/// How long a new agent may take to replace its filters (a VM under TCG is slow).
pub const WAIT: std::time::Duration = std::time::Duration::from_secs(180);

#[cfg(test)]
mod tests {
    #[test]
    fn filter_lines_are_parsed() {
        let text = "filter protocol all pref 1 bpf chain 0 \nfilter protocol all pref 1 bpf chain 0 handle 0x4c42 tc_egress direct-action not_in_hw id 42 tag 0123456789abcdef jited \n";
        assert_eq!(super::parse(text), vec![("tc_egress".to_string(), 42)]);
        assert_eq!(super::parse(""), vec![]);
    }
}
