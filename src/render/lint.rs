//! The quoting check: finds a `{{ … }}` placed where a shell-quoted word would not stay one word.
//!
//! bake writes every value into a shell template as one single-quoted word. That word is only
//! safe where the shell reads words: not inside `"…"`, `'…'`, `$'…'`, `$(…)`, backticks, a
//! comment or an unquoted heredoc, and not right after a `\` or `$`. This module reads a
//! template as the shell will read its output (minijinja tags and comments skipped) and reports
//! the first value in such a place. A template opts out with the marker [`OPT_OUT`].

/// The marker that turns the check off for one template, written as `{# bake: no-quote-check #}`.
pub const OPT_OUT: &str = "bake: no-quote-check";

/// What the check learned about a template that passed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Placements {
    /// The first line where a value sits inside a quoted heredoc: there the shell expands
    /// nothing, but a line of the value equal to the delimiter would end the heredoc early, so
    /// values of this template must be one line.
    pub in_quoted_heredoc: Option<usize>,
}

/// A value placed where its quoting does not hold.
#[derive(Debug, PartialEq, Eq)]
pub struct Unsafe {
    /// 1-based line of the `{{`.
    pub line: usize,
    /// The expression as written, without its braces.
    pub expr: String,
    /// Where it is and why that is unsafe.
    pub why: String,
}

impl std::fmt::Display for Unsafe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{{{{ {} }}}}` is {}. Set a variable where a shell word goes (`name={{{{ … }}}}`) \
             and use \"$name\" there, or, if this template is trusted to place values itself, \
             opt out with `{{# {OPT_OUT} #}}`",
            self.expr, self.why
        )
    }
}

#[derive(Debug, Clone, Copy)]
enum Frame {
    Double,
    Single,
    AnsiC,
    Backtick,
    /// `$(…)` (or `$((…))` when `arith`), with the number of open parentheses.
    Subst {
        depth: usize,
        arith: bool,
    },
    Comment,
}

impl Frame {
    fn why(self) -> &'static str {
        match self {
            Frame::Double => {
                "inside double quotes, where the value's own quotes are plain characters and \
                 any $(…), `…` or $ in it expands"
            }
            Frame::Single => "inside single quotes, which the value's own quotes would close",
            Frame::AnsiC => "inside $'…' quotes, which the value's own quotes would close",
            Frame::Backtick => {
                "inside backticks, where a ` in the value ends the command substitution"
            }
            Frame::Subst { .. } => "inside $(…), a command substitution",
            Frame::Comment => {
                "inside a shell comment, where a newline in the value starts a command"
            }
        }
    }
}

struct Heredoc {
    delim: String,
    quoted: bool,
    strip_tabs: bool,
    /// 1-based line of the `<<`.
    line: usize,
}

fn line_of(source: &str, at: usize) -> usize {
    source[..at].matches('\n').count() + 1
}

fn find(source: &str, from: usize, what: &str) -> Option<usize> {
    source.get(from..)?.find(what).map(|i| from + i)
}

/// The expression between `{{` at `start` and its `}}` (whitespace-control marks removed).
fn expression(source: &str, start: usize) -> (String, Option<usize>) {
    let end = find(source, start + 2, "}}");
    let inner = &source[start + 2..end.unwrap_or(source.len())];
    let inner = inner.strip_prefix(['-', '+']).unwrap_or(inner);
    let inner = inner.strip_suffix(['-', '+']).unwrap_or(inner);
    (inner.trim().to_owned(), end)
}

/// Checks where `source` places its values; see the module docs.
pub fn check(source: &str) -> Result<Placements, Unsafe> {
    let mut found = Placements::default();
    if source.contains(OPT_OUT) {
        return Ok(found);
    }
    let b = source.as_bytes();
    let at = |i: usize| b.get(i).copied().unwrap_or(0);
    let mut frames: Vec<Frame> = Vec::new();
    let mut pending: Vec<Heredoc> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        // minijinja's own syntax first: comments and tags write nothing, `{{` writes a value.
        if at(i) == b'{' && matches!(at(i + 1), b'#' | b'%') {
            let close = if at(i + 1) == b'#' { "#}" } else { "%}" };
            match find(source, i + 2, close) {
                Some(end) => i = end + 2,
                // Unterminated: a syntax error that minijinja reports with its position.
                None => return Ok(found),
            }
            continue;
        }
        if at(i) == b'{' && at(i + 1) == b'{' {
            let (expr, end) = expression(source, i);
            let unsafe_at = |why: String| Unsafe {
                line: line_of(source, i),
                expr: expr.clone(),
                why,
            };
            if let Some(frame) = frames.last() {
                return Err(unsafe_at(frame.why().to_owned()));
            }
            match i.checked_sub(1).map(at) {
                Some(b'\\') => {
                    return Err(unsafe_at(
                        "right after a backslash, which would escape the value's opening quote"
                            .to_owned(),
                    ));
                }
                Some(b'$') => {
                    return Err(unsafe_at(
                        "right after `$`, which would turn the value's quotes into $'…' quoting"
                            .to_owned(),
                    ));
                }
                _ => {}
            }
            match end {
                Some(end) => i = end + 2,
                None => return Ok(found),
            }
            continue;
        }
        let c = at(i);
        match frames.last().copied() {
            None | Some(Frame::Subst { .. }) => {
                match c {
                    // An escaped `{` can still open minijinja syntax, which is looked at next.
                    b'\\' if at(i + 1) != b'{' => i += 1,
                    b'\'' => frames.push(Frame::Single),
                    b'"' => frames.push(Frame::Double),
                    b'`' => frames.push(Frame::Backtick),
                    b'$' if at(i + 1) == b'\'' => {
                        frames.push(Frame::AnsiC);
                        i += 1;
                    }
                    b'$' if at(i + 1) == b'(' => {
                        let arith = at(i + 2) == b'(';
                        frames.push(Frame::Subst {
                            depth: if arith { 2 } else { 1 },
                            arith,
                        });
                        i += if arith { 2 } else { 1 };
                    }
                    b'(' | b')' => {
                        if let Some(Frame::Subst { depth, .. }) = frames.last_mut() {
                            if c == b'(' {
                                *depth += 1;
                            } else {
                                *depth -= 1;
                                if *depth == 0 {
                                    frames.pop();
                                }
                            }
                        }
                    }
                    b'#' if i == 0 || b" \t\n;&|()".contains(&at(i - 1)) => {
                        frames.push(Frame::Comment);
                    }
                    b'<' if at(i + 1) == b'<'
                        && at(i + 2) != b'<'
                        && !matches!(frames.last(), Some(Frame::Subst { arith: true, .. })) =>
                    {
                        if let Some((heredoc, next)) = heredoc_operator(source, i) {
                            pending.push(heredoc);
                            i = next;
                            continue;
                        }
                    }
                    b'\n' if !pending.is_empty() => {
                        i = heredoc_bodies(source, i + 1, &mut pending, &mut found)?;
                        continue;
                    }
                    _ => {}
                }
                i += 1;
            }
            Some(frame) => {
                match (frame, c) {
                    (Frame::Double | Frame::AnsiC | Frame::Backtick, b'\\')
                        if at(i + 1) != b'{' =>
                    {
                        i += 1;
                    }
                    (Frame::Double, b'"') | (Frame::Single | Frame::AnsiC, b'\'') => {
                        frames.pop();
                    }
                    (Frame::Backtick, b'`') => {
                        frames.pop();
                    }
                    (Frame::Double | Frame::Backtick, b'$') if at(i + 1) == b'(' => {
                        let arith = at(i + 2) == b'(';
                        frames.push(Frame::Subst {
                            depth: if arith { 2 } else { 1 },
                            arith,
                        });
                        i += if arith { 2 } else { 1 };
                    }
                    (Frame::Double, b'`') => frames.push(Frame::Backtick),
                    (Frame::Backtick, b'\'') => frames.push(Frame::Single),
                    (Frame::Backtick, b'"') => frames.push(Frame::Double),
                    (Frame::Comment, b'\n') => {
                        // The newline also ends the command line: heredoc bodies start after it.
                        frames.pop();
                        continue;
                    }
                    _ => {}
                }
                i += 1;
            }
        }
    }
    Ok(found)
}

/// Parses `<<DELIM`, `<<-DELIM`, `<<'DELIM'`, `<< "DELIM"` at `start`; returns it and where the
/// command line goes on.
fn heredoc_operator(source: &str, start: usize) -> Option<(Heredoc, usize)> {
    let b = source.as_bytes();
    let mut j = start + 2;
    let strip_tabs = b.get(j) == Some(&b'-');
    if strip_tabs {
        j += 1;
    }
    while matches!(b.get(j), Some(b' ' | b'\t')) {
        j += 1;
    }
    let word_start = j;
    while let Some(&c) = b.get(j) {
        if c.is_ascii_whitespace() || b";|&<>()".contains(&c) {
            break;
        }
        j += 1;
    }
    let word = &source[word_start..j];
    let quoted = word.contains(['\'', '"', '\\']);
    let delim: String = word.chars().filter(|c| !"'\"\\".contains(*c)).collect();
    if delim.is_empty() || word.contains("{{") {
        return None;
    }
    Some((
        Heredoc {
            delim,
            quoted,
            strip_tabs,
            line: line_of(source, start),
        },
        j,
    ))
}

/// Reads the bodies of the pending heredocs from `start` (a line start); returns where the
/// script goes on.
fn heredoc_bodies(
    source: &str,
    mut start: usize,
    pending: &mut Vec<Heredoc>,
    found: &mut Placements,
) -> Result<usize, Unsafe> {
    for heredoc in pending.drain(..) {
        loop {
            if start >= source.len() {
                return Ok(start);
            }
            let end = find(source, start, "\n").unwrap_or(source.len());
            let text = &source[start..end];
            let text = text.strip_suffix('\r').unwrap_or(text);
            let text = if heredoc.strip_tabs {
                text.trim_start_matches('\t')
            } else {
                text
            };
            if text == heredoc.delim {
                start = end + 1;
                break;
            }
            if let Some(open) = find(source, start, "{{").filter(|&o| o < end) {
                let line = line_of(source, open);
                if heredoc.quoted {
                    found.in_quoted_heredoc.get_or_insert(line);
                } else {
                    return Err(Unsafe {
                        line,
                        expr: expression(source, open).0,
                        why: format!(
                            "inside the unquoted heredoc <<{} of line {}, where any $(…), `…` or \
                             $ in the value expands (a quoted <<'{}' expands nothing)",
                            heredoc.delim, heredoc.line, heredoc.delim
                        ),
                    });
                }
            }
            start = end + 1;
        }
    }
    Ok(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn why(source: &str) -> String {
        let e = check(source).unwrap_err();
        format!("{}: {}", e.line, e.why)
    }

    #[test]
    fn values_as_words_pass() {
        let ok = "#!/bin/bash\n# a comment\nname={{ vars.name }}\necho \"$name\" {{ x }}\n\
                  p=\"$DIR\"{{ health.path }}\nx=$(date) {{ y | default(\"a b\") }}\n\
                  printf '%s' {{ z }} >out\nn=$((1 << 2)) {{ w }}\n";
        assert_eq!(check(ok), Ok(Placements::default()));
    }

    #[test]
    fn each_unsafe_place_is_found_with_its_line() {
        assert!(why("a\necho \"x {{ v }}\"\n").starts_with("2: inside double quotes"));
        assert!(why("echo $(cat {{ v }})\n").starts_with("1: inside $(…)"));
        assert!(why("echo \"$(cat {{ v }})\"\n").starts_with("1: inside $(…)"));
        assert!(why("echo `cat {{ v }}`\n").starts_with("1: inside backticks"));
        assert!(why("echo 'x {{ v }}'\n").starts_with("1: inside single quotes"));
        assert!(why("echo $'x {{ v }}'\n").starts_with("1: inside $'…'"));
        assert!(why("true # {{ v }}\n").starts_with("1: inside a shell comment"));
        assert!(why("echo \\{{ v }}\n").starts_with("1: right after a backslash"));
        assert!(why("echo ${{ v }}\n").starts_with("1: right after `$`"));
        assert!(why("cat <<EOF\nx\n{{ v }}\nEOF\n").starts_with("3: inside the unquoted heredoc"));
        assert!(why("cat <<-EOF >f\n\tx {{ v }}\n\tEOF\n").starts_with("2: inside the unquoted"));
    }

    #[test]
    fn quoted_heredocs_pass_but_are_noted() {
        let source = "cat <<'EOF'\nlisten $x;\nport {{ p }}\nEOF\necho {{ v }}\n";
        assert_eq!(check(source).unwrap().in_quoted_heredoc, Some(3));
        // After the heredoc ends, the shell reads words again.
        assert!(why("cat <<'EOF'\nEOF\necho \"{{ v }}\"\n").starts_with("3: inside double"));
    }

    #[test]
    fn quotes_in_minijinja_syntax_and_escapes_do_not_confuse_it() {
        let ok = "{#- it's \"a\" comment -#}\n{% set a = \"'\" %}\necho \\\" {{ v }}\n\
                  echo \"a\\\"b\" {{ v }}\necho it\\'s {{ v }}\n";
        assert!(check(ok).is_ok(), "{:?}", check(ok));
        assert!(why("{% if x %}\"{% endif %}{{ v }}\"").starts_with("1: inside double"));
    }

    #[test]
    fn the_marker_opts_a_template_out() {
        assert!(check("{# bake: no-quote-check #}\necho \"{{ v }}\"\n").is_ok());
    }

    #[test]
    fn the_message_says_how_to_fix_and_how_to_opt_out() {
        let e = check("echo \"{{- vars.a | upper -}}\"").unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("`{{ vars.a | upper }}` is inside double quotes"),
            "{text}"
        );
        assert!(text.contains("{# bake: no-quote-check #}"), "{text}");
    }
}
