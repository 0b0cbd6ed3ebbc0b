//! A small model of a `bake.toml` (sections of `key = value` lines) that the corpus edits and
//! that remembers which line an edit touched, so a case knows the line its error must name.

/// A config file as sections of `key = value` lines, one of them possibly marked.
#[derive(Clone, Debug)]
pub struct Doc {
    sections: Vec<Section>,
}

#[derive(Clone, Debug)]
struct Section {
    /// The table header without brackets; empty for the top level.
    header: String,
    /// The header line is the place of the mistake.
    marked: bool,
    entries: Vec<Entry>,
}

#[derive(Clone, Debug)]
struct Entry {
    /// The key as written in the file (quoted when it needs to be).
    key: String,
    /// The value as written in the file (a TOML literal).
    value: String,
    /// This line is the place of the mistake.
    marked: bool,
}

/// Where the marked line is: its 1-based number and its text.
#[derive(Clone, Debug)]
pub struct Mark {
    pub line: usize,
    pub text: String,
}

impl Doc {
    /// Reads the simple layout this model writes: `[header]` lines, `key = value` lines (one
    /// line each) and blank lines.
    pub fn parse(text: &str) -> Doc {
        let mut sections = vec![Section {
            header: String::new(),
            marked: false,
            entries: Vec::new(),
        }];
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                sections.push(Section {
                    header: header.to_owned(),
                    marked: false,
                    entries: Vec::new(),
                });
            } else {
                let (key, value) = line
                    .split_once(" = ")
                    .unwrap_or_else(|| panic!("corpus base line without ` = `: {line}"));
                sections.last_mut().unwrap().entries.push(Entry {
                    key: key.to_owned(),
                    value: value.to_owned(),
                    marked: false,
                });
            }
        }
        Doc { sections }
    }

    fn clear_marks(&mut self) {
        for section in &mut self.sections {
            section.marked = false;
            for entry in &mut section.entries {
                entry.marked = false;
            }
        }
    }

    fn section_mut(&mut self, header: &str) -> &mut Section {
        if let Some(i) = self.sections.iter().position(|s| s.header == header) {
            return &mut self.sections[i];
        }
        self.sections.push(Section {
            header: header.to_owned(),
            marked: false,
            entries: Vec::new(),
        });
        self.sections.last_mut().unwrap()
    }

    /// Sets `key = value` in `section` (created at the end when missing; "" is the top level)
    /// and marks that line as the place of the mistake.
    pub fn set(mut self, section: &str, key: &str, value: &str) -> Doc {
        self.clear_marks();
        self.put(section, key, value, true);
        self
    }

    /// Sets `key = value` in `section` without moving the mark: setup, not the mistake.
    pub fn setup(mut self, section: &str, key: &str, value: &str) -> Doc {
        self.put(section, key, value, false);
        self
    }

    fn put(&mut self, section: &str, key: &str, value: &str, marked: bool) {
        let section = self.section_mut(section);
        match section.entries.iter_mut().find(|e| e.key == key) {
            Some(entry) => {
                entry.value = value.to_owned();
                entry.marked = marked;
            }
            None => section.entries.push(Entry {
                key: key.to_owned(),
                value: value.to_owned(),
                marked,
            }),
        }
    }

    /// Removes `key` from `section`.
    pub fn remove(mut self, section: &str, key: &str) -> Doc {
        if let Some(s) = self.sections.iter_mut().find(|s| s.header == section) {
            s.entries.retain(|e| e.key != key);
        }
        self
    }

    /// Removes the section `header` and every section below it.
    pub fn drop_sections(mut self, header: &str) -> Doc {
        self.sections.retain(|s| !is_under(&s.header, header));
        self
    }

    /// Renames the section `from` and those below it to start with `to` (a typo'd or odd table
    /// name) and marks the first renamed header.
    pub fn rename_sections(mut self, from: &str, to: &str) -> Doc {
        self.clear_marks();
        let mut first = true;
        for section in &mut self.sections {
            if is_under(&section.header, from) {
                section.header = format!("{to}{}", &section.header[from.len()..]);
                section.marked = first;
                first = false;
            }
        }
        assert!(!first, "corpus: no section {from} to rename");
        self
    }

    /// Renames the one table header `from` (not the tables below it) to `to`, and marks it.
    pub fn rename_header(mut self, from: &str, to: &str) -> Doc {
        self.clear_marks();
        let section = self
            .sections
            .iter_mut()
            .find(|s| s.header == from)
            .unwrap_or_else(|| panic!("corpus: no section {from} to rename"));
        section.header = to.to_owned();
        section.marked = true;
        self
    }

    /// Writes the table `header` as an inline table in its parent (`[a.b]` with `k = v` becomes
    /// `b = { k = v }` in `[a]`); a mark on one of its lines moves to the new line.
    pub fn inline(mut self, header: &str) -> Doc {
        let i = self
            .sections
            .iter()
            .position(|s| s.header == header)
            .unwrap_or_else(|| panic!("corpus: no section {header} to inline"));
        let section = self.sections.remove(i);
        let (parent, key) = header.rsplit_once('.').unwrap_or(("", header));
        let value = format!(
            "{{ {} }}",
            section
                .entries
                .iter()
                .map(|e| format!("{} = {}", e.key, e.value))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let marked = section.marked || section.entries.iter().any(|e| e.marked);
        self.put(parent, key, &value, marked);
        self
    }

    /// The file's text.
    pub fn text(&self) -> String {
        self.render().0
    }

    /// Where the marked line is.
    pub fn mark(&self) -> Option<Mark> {
        self.render().1
    }

    fn render(&self) -> (String, Option<Mark>) {
        let mut lines: Vec<String> = Vec::new();
        let mut mark = None;
        let mut note = |lines: &Vec<String>, marked: bool| {
            if marked {
                mark = Some(Mark {
                    line: lines.len(),
                    text: lines.last().unwrap().clone(),
                });
            }
        };
        for section in &self.sections {
            if !section.header.is_empty() {
                if !lines.is_empty() {
                    lines.push(String::new());
                }
                lines.push(format!("[{}]", section.header));
                note(&lines, section.marked);
            }
            for entry in &section.entries {
                lines.push(format!("{} = {}", entry.key, entry.value));
                note(&lines, entry.marked);
            }
        }
        let mut text = lines.join("\n");
        text.push('\n');
        (text, mark)
    }
}

fn is_under(header: &str, top: &str) -> bool {
    header == top || header.strip_prefix(top).is_some_and(|r| r.starts_with('.'))
}

/// A TOML basic string holding `text`.
pub fn q(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "region = \"r\"\n\n[a]\nx = 1\n\n[a.b]\ny = 2\nz = \"s\"\n";

    #[test]
    fn round_trips_and_marks_the_line_it_set() {
        let doc = Doc::parse(TEXT);
        assert_eq!(doc.text(), TEXT);
        let doc = doc.set("a.b", "z", "\"t\"");
        let mark = doc.mark().unwrap();
        assert_eq!((mark.line, mark.text.as_str()), (8, "z = \"t\""));
    }

    #[test]
    fn inline_moves_the_mark_to_the_parent_line() {
        let doc = Doc::parse(TEXT).set("a.b", "y", "0").inline("a.b");
        assert_eq!(
            doc.text(),
            "region = \"r\"\n\n[a]\nx = 1\nb = { y = 0, z = \"s\" }\n"
        );
        assert_eq!(doc.mark().unwrap().line, 5);
    }

    #[test]
    fn rename_marks_the_first_renamed_header() {
        let doc = Doc::parse(TEXT).rename_sections("a", "as");
        assert!(doc.text().contains("[as]\nx = 1\n\n[as.b]"));
        assert_eq!(doc.mark().unwrap().line, 3);
    }

    #[test]
    fn toml_strings_escape_quotes_and_controls() {
        assert_eq!(q("a\"b\\c\nd\u{7}"), "\"a\\\"b\\\\c\\nd\\u0007\"");
    }
}
