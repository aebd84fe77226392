//! The WIT of `shoal:platform` and the WASI packages it uses, compiled into the
//! binary so `shoal new` can give every service the interface it builds against.

/// Every file of the repository's `wit/` folder: (path inside it, text).
pub const FILES: &[(&str, &str)] = &[
    ("caller.wit", include_str!("../../../wit/caller.wit")),
    ("config.wit", include_str!("../../../wit/config.wit")),
    (
        "deps/cli/cli.wit",
        include_str!("../../../wit/deps/cli/cli.wit"),
    ),
    (
        "deps/clocks/clocks.wit",
        include_str!("../../../wit/deps/clocks/clocks.wit"),
    ),
    (
        "deps/config/store.wit",
        include_str!("../../../wit/deps/config/store.wit"),
    ),
    (
        "deps/config/world.wit",
        include_str!("../../../wit/deps/config/world.wit"),
    ),
    (
        "deps/filesystem/filesystem.wit",
        include_str!("../../../wit/deps/filesystem/filesystem.wit"),
    ),
    (
        "deps/http/http.wit",
        include_str!("../../../wit/deps/http/http.wit"),
    ),
    (
        "deps/io/io.wit",
        include_str!("../../../wit/deps/io/io.wit"),
    ),
    (
        "deps/keyvalue/atomic.wit",
        include_str!("../../../wit/deps/keyvalue/atomic.wit"),
    ),
    (
        "deps/keyvalue/batch.wit",
        include_str!("../../../wit/deps/keyvalue/batch.wit"),
    ),
    (
        "deps/keyvalue/store.wit",
        include_str!("../../../wit/deps/keyvalue/store.wit"),
    ),
    (
        "deps/keyvalue/watch.wit",
        include_str!("../../../wit/deps/keyvalue/watch.wit"),
    ),
    (
        "deps/keyvalue/world.wit",
        include_str!("../../../wit/deps/keyvalue/world.wit"),
    ),
    (
        "deps/random/random.wit",
        include_str!("../../../wit/deps/random/random.wit"),
    ),
    (
        "deps/sockets/sockets.wit",
        include_str!("../../../wit/deps/sockets/sockets.wit"),
    ),
    ("discovery.wit", include_str!("../../../wit/discovery.wit")),
    ("events.wit", include_str!("../../../wit/events.wit")),
    ("health.wit", include_str!("../../../wit/health.wit")),
    ("log.wit", include_str!("../../../wit/log.wit")),
    ("metrics.wit", include_str!("../../../wit/metrics.wit")),
    ("registry.wit", include_str!("../../../wit/registry.wit")),
    ("secrets.wit", include_str!("../../../wit/secrets.wit")),
    ("store.wit", include_str!("../../../wit/store.wit")),
    ("tracing.wit", include_str!("../../../wit/tracing.wit")),
    ("worlds.wit", include_str!("../../../wit/worlds.wit")),
];
