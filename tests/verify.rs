//! `bake ami`'s verification against the lab, whose agent runs it as AWS's does: under `sh`
//! (dash), with stdout cut at 24,000 characters and stderr at 8,000.

mod support;

use support::output::stderr;
use support::{Lab, Scratch, quick_config};

#[tokio::test(flavor = "multi_thread")]
async fn a_loud_verify_step_does_not_hide_the_one_that_fails() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    // Step 1 prints 30,000 characters on stdout and 10,000 on stderr (more than SSM keeps of
    // each), step 2 passes, step 3 fails.
    let scratch = Scratch::new(&quick_config(
        "body = \"hello\"",
        "expect_body = \"hello\"",
        "commands = [\
           \"head -c 30000 /dev/zero | tr '\\\\0' o; head -c 10000 /dev/zero | tr '\\\\0' e >&2\", \
           \"test -s /srv/www/index.html\", \
           \"echo last words; exit 4\"]",
    ));
    let out = lab
        .run_bake(&["-c", &scratch.config(), "ami", "quick"])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("verify command `echo last words; exit 4` on builder i-")
            && err.contains("exited 4")
            && err.contains("last words"),
        "{err}"
    );
    assert_eq!(lab.calls("CreateImage").await, 0);
    lab.assert_nothing_left(&[], &[]).await;
}
