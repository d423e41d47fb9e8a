//! Where the objects come from. Every source delivers whole models through a
//! `tokio::sync::watch` channel: a consumer that falls behind sees only the
//! latest model, so a burst of changes costs one plan, not one per change.
//! Models travel as `Arc<Model>`: the consumer takes one without copying it
//! and without holding the channel's lock while it works.
use std::{path::PathBuf, str::FromStr};

pub mod file;
pub mod kube;
mod wake;

/// A `--source` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceSpec {
    /// `file:<path>`: a YAML file or a directory of them, followed live.
    File(PathBuf),
    /// `kube`: the API server (in-cluster or kubeconfig).
    Kube,
}

impl FromStr for SourceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "kube" {
            return Ok(SourceSpec::Kube);
        }
        match s.strip_prefix("file:") {
            Some(p) if !p.is_empty() => Ok(SourceSpec::File(PathBuf::from(p))),
            _ => Err(format!(
                "unknown source {s:?}: use file:<path> (a YAML file or directory) or kube"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_specs_parse() {
        assert_eq!("file:/tmp/x".parse(), Ok(SourceSpec::File("/tmp/x".into())));
        assert_eq!("kube".parse(), Ok(SourceSpec::Kube));
        assert!("file:".parse::<SourceSpec>().is_err());
        assert!("http://x".parse::<SourceSpec>().is_err());
    }
}
