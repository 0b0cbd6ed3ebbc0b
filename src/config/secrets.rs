//! Var names that look like secrets: the words, and matching them on a name's parts after
//! look-alike letters are folded.

/// Words that mark a var name as a secret when they are one of its parts, or several adjacent
/// parts run together (parts are split at `_`, `-`, other punctuation, case changes and digits,
/// after look-alike letters are folded to their Latin ones): `db_pass`, `apiKey`,
/// `AWS_ACCESS_KEY_ID` and `tls_private_key` match; `secretary_name` and `tokenizer_model` do
/// not. A name that only looks secret goes into the top-level `public_vars` list.
pub const SECRET_WORDS: &[&str] = &[
    "password",
    "passwords",
    "passwd",
    "pass",
    "pwd",
    "passphrase",
    "secret",
    "secrets",
    "token",
    "tokens",
    "credential",
    "credentials",
    "creds",
    "privatekey",
    "accesskey",
    "secretkey",
    "apikey",
    "sshkey",
    "signingkey",
    "encryptionkey",
    "sessionkey",
    "masterkey",
];

/// The secret word (from [`SECRET_WORDS`]) a var name is made of, if any. Parts are split at
/// punctuation, case changes and letter/digit boundaries, folded to lower case and to their
/// Unicode confusable skeleton (so Cyrillic `а` or fullwidth `ｐ` count as `a` and `p`), then
/// each run of up to four adjacent parts is compared with the words.
pub fn secret_word(name: &str) -> Option<&'static str> {
    let fold = |s: &str| -> String {
        unicode_security::skeleton(&s.to_lowercase())
            .collect::<String>()
            .to_lowercase()
    };
    let parts: Vec<String> = name_parts(name).iter().map(|p| fold(p)).collect();
    let words: Vec<(String, &'static str)> = SECRET_WORDS.iter().map(|w| (fold(w), *w)).collect();
    for start in 0..parts.len() {
        let mut run = String::new();
        for part in parts.iter().skip(start).take(4) {
            run.push_str(part);
            if let Some((_, word)) = words.iter().find(|(w, _)| *w == run) {
                return Some(word);
            }
        }
    }
    None
}

/// `dbPassword2_API-key` → `db`, `Password`, `2`, `API`, `key`.
fn name_parts(name: &str) -> Vec<String> {
    let folded: String = name
        .chars()
        .map(|c| match c {
            // Fullwidth forms of ASCII, so that case and digits split them as ASCII.
            '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
            c => c,
        })
        .collect();
    let mut parts = Vec::new();
    let mut current = String::new();
    let chars: Vec<char> = folded.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if !c.is_alphanumeric() {
            if !current.is_empty() {
                parts.push(std::mem::take(&mut current));
            }
            continue;
        }
        if let Some(&prev) = current.chars().last().as_ref() {
            let next = chars.get(i + 1).copied();
            let boundary = (prev.is_numeric() != c.is_numeric())
                || (prev.is_lowercase() && c.is_uppercase())
                || (prev.is_uppercase()
                    && c.is_uppercase()
                    && next.is_some_and(char::is_lowercase));
            if boundary {
                parts.push(std::mem::take(&mut current));
            }
        }
        current.push(c);
    }
    if !current.is_empty() {
        parts.push(current);
    }
    parts
}

#[cfg(test)]
mod tests {
    use crate::config::testing::*;

    use super::*;

    #[test]
    fn secret_names_are_matched_on_parts_after_folding_look_alikes() {
        for name in [
            "db_pass",
            "pwd",
            "passphrase",
            "credentials",
            "aws_access_key_id",
            "AWS_SECRET_ACCESS_KEY",
            "ssh_key",
            "sshKey",
            "apiKey",
            "GITHUB_TOKEN",
            "dbPassword2",
            "passw0rd",
            "d\u{0430}tabase_p\u{0430}ssword", // Cyrillic а
            "\u{FF50}\u{FF57}\u{FF44}",        // fullwidth ｐｗｄ
            "db\u{0420}ass",                   // Cyrillic Р as a capital
        ] {
            assert!(secret_word(name).is_some(), "{name} should look secret");
        }
        for name in [
            "secretary_name",
            "tokenizer_model",
            "passenger_count",
            "compass",
            "app",
            "title",
            "keynote",
        ] {
            assert!(secret_word(name).is_none(), "{name} should not look secret");
        }
        let text = with_image("vars = { secretary_name = \"Ann\", tokenizer_model = \"bpe\" }");
        parse(&text).unwrap();
        let text = with_image("vars = { pass_rate = \"90\" }");
        assert!(error(&text).contains("list it in `public_vars`"));
        parse(&format!("public_vars = [\"pass_rate\"]\n{text}")).unwrap();
    }
}
