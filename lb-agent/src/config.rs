//! `--config FILE`: the options of `lb-agent run` (or `plan`) from a YAML
//! mapping, as a DaemonSet's ConfigMap or /etc/xdplb/config.yaml holds them:
//!
//! ```yaml
//! iface: [eth0]              # a list for repeatable options
//! pod-iface: ["cali*"]
//! node-address: [192.168.1.1]
//! default-algorithm: maglev
//! max-flows: 2097152
//! ```
//!
//! Keys are the long option names. The file's options go in front of the
//! command line's, so a flag given on the command line wins (a repeatable
//! one adds to the file's list).
use std::{ffi::OsString, path::Path};

use anyhow::{bail, Context as _, Result};

/// `args` with every `--config FILE` expanded in place of itself.
pub fn expand(args: Vec<OsString>) -> Result<Vec<OsString>> {
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let file = match a.to_str() {
            Some("--config") => it.next().context("--config needs a file")?,
            Some(s) if s.starts_with("--config=") => OsString::from(&s["--config=".len()..]),
            _ => {
                out.push(a);
                continue;
            }
        };
        // Right after the subcommand, before any flag of the command line.
        let at = out.iter().position(|x| x == "run" || x == "plan").map_or(out.len(), |i| i + 1);
        let expanded = options(Path::new(&file))?;
        out.splice(at..at, expanded);
    }
    Ok(out)
}

/// The options in `file` as command-line arguments.
fn options(file: &Path) -> Result<Vec<OsString>> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading --config {}", file.display()))?;
    let map: serde_norway::Mapping = serde_norway::from_str(&text).with_context(|| format!("{}: expected a YAML mapping of option names to values", file.display()))?;
    let mut args = Vec::new();
    for (k, v) in map {
        let Some(key) = k.as_str() else { bail!("{}: option names must be strings, got {k:?}", file.display()) };
        let flag = OsString::from(format!("--{key}"));
        let values = match v {
            serde_norway::Value::Sequence(items) => items,
            serde_norway::Value::Bool(true) => {
                args.push(flag);
                continue;
            }
            serde_norway::Value::Bool(false) | serde_norway::Value::Null => continue,
            one => vec![one],
        };
        for v in values {
            let text = match v {
                serde_norway::Value::String(s) => s,
                serde_norway::Value::Number(n) => n.to_string(),
                other => bail!("{}: {key}: expected a string, number or list, got {other:?}", file.display()),
            };
            args.push(flag.clone());
            args.push(OsString::from(text));
        }
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_file_goes_before_the_command_line() {
        let dir = std::env::temp_dir().join(format!("xdplb-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("config.yaml");
        std::fs::write(&f, "iface: [eth0, eth1]\nmax-flows: 2097152\ndefault-algorithm: maglev\n").unwrap();
        let got = expand(os(&["lb-agent", "run", "--config", f.to_str().unwrap(), "--default-algorithm", "random"])).unwrap();
        let want = os(&[
            "lb-agent", "run", "--iface", "eth0", "--iface", "eth1", "--max-flows", "2097152",
            "--default-algorithm", "maglev", "--default-algorithm", "random",
        ]);
        assert_eq!(got, want);
        std::fs::write(&f, "- not a mapping\n").unwrap();
        let err = expand(os(&["lb-agent", "run", "--config", f.to_str().unwrap()])).unwrap_err();
        assert!(format!("{err:#}").contains("expected a YAML mapping"), "{err:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
