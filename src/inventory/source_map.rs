//! Where each field of a YAML document stands: `spec.hosts[2].address` -> line:column.
//!
//! serde gives located errors only while deserializing; checks that run afterwards (duplicate
//! addresses, overlapping CIDRs, ...) look their field up here to name the line. Built from the
//! same parser serde-saphyr uses (granit_parser), so both agree on positions.

use serde_saphyr::granit_parser::{Event, Parser};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

#[derive(Debug, Default, Clone)]
pub struct SourceMap {
    /// path -> position of the key (for mapping entries) or of the item (for sequence items)
    keys: HashMap<String, Pos>,
    /// path -> position of the value
    values: HashMap<String, Pos>,
}

enum Frame {
    Map {
        path: String,
        pending_key: Option<(String, Pos)>,
        expecting_key: bool,
    },
    Seq {
        path: String,
        index: usize,
    },
}

fn child(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl SourceMap {
    /// Builds the map; a document that does not parse gives an empty map (serde reports why).
    pub fn build(text: &str) -> SourceMap {
        let mut map = SourceMap::default();
        let mut stack: Vec<Frame> = Vec::new();
        let mut parser = Parser::new_from_str(text);
        while let Some(Ok((event, span))) = parser.next_event() {
            let pos = Pos {
                line: span.start.line(),
                column: span.start.col() + 1,
            };
            // Where does this node go? Decide its path from the enclosing frame.
            let node_path = match stack.last_mut() {
                Some(Frame::Map {
                    path,
                    pending_key,
                    expecting_key,
                }) => {
                    if *expecting_key {
                        None // this event is a key
                    } else {
                        let (k, _) = pending_key.take().unwrap_or_default();
                        *expecting_key = true;
                        Some(child(path, &k))
                    }
                }
                Some(Frame::Seq { path, index }) => {
                    let p = format!("{path}[{index}]");
                    *index += 1;
                    Some(p)
                }
                None => Some(String::new()),
            };
            match event {
                Event::Scalar(value, ..) => match node_path {
                    None => {
                        if let Some(Frame::Map {
                            path,
                            pending_key,
                            expecting_key,
                        }) = stack.last_mut()
                        {
                            let p = child(path, &value);
                            map.keys.insert(p, pos);
                            *pending_key = Some((value.into_owned(), pos));
                            *expecting_key = false;
                        }
                    }
                    Some(p) => {
                        map.keys.entry(p.clone()).or_insert(pos);
                        map.values.insert(p, pos);
                    }
                },
                Event::MappingStart(..) | Event::SequenceStart(..) => {
                    let p = match node_path {
                        Some(p) => p,
                        None => {
                            // A complex key: not used by the inventory; give it a throwaway path.
                            if let Some(Frame::Map {
                                pending_key,
                                expecting_key,
                                ..
                            }) = stack.last_mut()
                            {
                                *pending_key = Some(("?".into(), pos));
                                *expecting_key = false;
                            }
                            "?".into()
                        }
                    };
                    map.keys.entry(p.clone()).or_insert(pos);
                    map.values.insert(p.clone(), pos);
                    if matches!(event, Event::MappingStart(..)) {
                        stack.push(Frame::Map {
                            path: p,
                            pending_key: None,
                            expecting_key: true,
                        });
                    } else {
                        stack.push(Frame::Seq { path: p, index: 0 });
                    }
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                }
                Event::Alias(..) => {
                    if let Some(p) = node_path {
                        map.values.insert(p, pos);
                    }
                }
                _ => {}
            }
        }
        map
    }

    /// Position of a field's value, or of the nearest ancestor that exists in the file (a
    /// defaulted field is reported where its parent is).
    pub fn value(&self, path: &str) -> Option<Pos> {
        self.lookup(&self.values, path)
    }

    /// Position of a field's key (the start of `address:`), or the nearest ancestor's.
    pub fn key(&self, path: &str) -> Option<Pos> {
        self.lookup(&self.keys, path)
    }

    /// The field written at `line:column`: whose value starts there, else whose key does,
    /// else the deepest field whose key is on that line. For errors that come with a place
    /// only (the YAML reader's), so they can name their field too.
    pub fn path_at(&self, line: usize, column: usize) -> Option<String> {
        let at = Pos { line, column };
        let exact = |m: &HashMap<String, Pos>| {
            m.iter()
                .filter(|(_, p)| **p == at)
                .map(|(k, _)| k.clone())
                .max_by_key(|k| k.len())
        };
        exact(&self.values)
            .or_else(|| exact(&self.keys))
            .or_else(|| {
                self.keys
                    .iter()
                    .filter(|(_, p)| p.line == line && p.column <= column)
                    .max_by_key(|(_, p)| p.column)
                    .map(|(k, _)| k.clone())
            })
    }

    /// Position of a field's value only if the field is written in the file.
    pub fn exact_value(&self, path: &str) -> Option<Pos> {
        self.values.get(path).copied()
    }

    fn lookup(&self, m: &HashMap<String, Pos>, path: &str) -> Option<Pos> {
        let mut p = path.to_string();
        loop {
            if let Some(pos) = m.get(&p) {
                return Some(*pos);
            }
            let cut = p.rfind(['.', '['])?;
            p.truncate(cut);
            if p.is_empty() {
                return m.get("").copied();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_of_nested_fields() {
        let text = "a: 1\nspec:\n  hosts:\n    - name: h1\n      address: 10.0.0.1\n    - name: h2\n      address: 10.0.0.2\n  list: [x, y]\n";
        let m = SourceMap::build(text);
        assert_eq!(m.value("a"), Some(Pos { line: 1, column: 4 }));
        assert_eq!(
            m.key("spec.hosts[1].address"),
            Some(Pos { line: 7, column: 7 })
        );
        assert_eq!(
            m.value("spec.hosts[1].address"),
            Some(Pos {
                line: 7,
                column: 16
            })
        );
        assert_eq!(
            m.value("spec.hosts[0].name"),
            Some(Pos {
                line: 4,
                column: 13
            })
        );
        assert_eq!(
            m.value("spec.list[1]"),
            Some(Pos {
                line: 8,
                column: 13
            })
        );
        // Missing field: falls back to its parent.
        assert_eq!(
            m.value("spec.hosts[1].port"),
            Some(Pos { line: 6, column: 7 })
        );
    }
}
