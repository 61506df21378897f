#![cfg(loom)]
#[test]
fn smoke() {
    loom::model(|| {
        let (ctx, guard) = cancelctx::Context::unclocked().with_cancel();
        guard.cancel();
        assert!(ctx.is_done());
    });
}
