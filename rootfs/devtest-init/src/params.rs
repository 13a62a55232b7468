//! `cocoon.test=` and `cocoon.<check>.<key>=` from the kernel command line.

use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct Params {
    tests: Vec<String>,
    values: HashMap<String, String>,
}

impl Params {
    pub fn parse(cmdline: &str) -> Self {
        let mut p = Params::default();
        for word in cmdline.split_whitespace() {
            let Some(rest) = word.strip_prefix("cocoon.") else {
                continue;
            };
            let Some((key, value)) = rest.split_once('=') else {
                continue;
            };
            if key == "test" {
                p.tests = value
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect();
            } else {
                p.values.insert(key.to_string(), value.to_string());
            }
        }
        p
    }

    /// The checks to run, in order.
    pub fn tests(&self) -> Vec<String> {
        self.tests.clone()
    }

    /// `cocoon.<check>.<key>`, if given.
    pub fn get(&self, check: &str, key: &str) -> Option<&str> {
        self.values
            .get(&format!("{check}.{key}"))
            .map(String::as_str)
    }

    /// `cocoon.<check>.<key>`, or an error naming it.
    #[allow(dead_code)] // the device checks use it as they are written
    pub fn require(&self, check: &str, key: &str) -> Result<&str, String> {
        self.get(check, key)
            .ok_or_else(|| format!("missing cocoon.{check}.{key}= on the command line"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tests_and_values() {
        let p = Params::parse("console=ttyS0 cocoon.test=vsock,fs cocoon.fs.tag=share cocoon.x");
        assert_eq!(p.tests(), vec!["vsock", "fs"]);
        assert_eq!(p.get("fs", "tag"), Some("share"));
        assert_eq!(p.get("fs", "nope"), None);
        assert!(p
            .require("blk", "dev")
            .unwrap_err()
            .contains("cocoon.blk.dev"));
    }
}
