//! Paged listings: each page asked for with the token (or marker) the last one returned, until
//! one returns none or a bound on the pages is reached.

use std::future::Future;

use super::CallError;

/// The pages of a listing: `page(token)` asks for one (the first with `None`), `next` reads the
/// token of the page after it from its answer; an empty token ends the listing too. At most
/// `max_pages` pages are asked for, whatever the tokens say.
pub async fn all<T, Fut>(
    max_pages: usize,
    mut page: impl FnMut(Option<String>) -> Fut,
    next: impl Fn(&T) -> Option<&str>,
) -> Result<Vec<T>, CallError>
where
    Fut: Future<Output = Result<T, CallError>>,
{
    let mut pages = Vec::new();
    let mut token = None;
    for _ in 0..max_pages {
        let out = page(token.take()).await?;
        token = next(&out).filter(|t| !t.is_empty()).map(str::to_owned);
        pages.push(out);
        if token.is_none() {
            break;
        }
    }
    Ok(pages)
}
