//! An error and its causes on one line, for log fields: a leaf, so every
//! layer can log a typed error's whole chain without depending on `error`.
/// `e` and its sources on one line, `: `-separated (as anyhow's `{:#}`),
/// for log fields.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out += ": ";
        out += &s.to_string();
        next = s.source();
    }
    out
}
