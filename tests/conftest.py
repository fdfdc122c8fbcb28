import structlog

# Tests run without the command line's logging set-up; keep structlog quiet
# unless a test captures its output with structlog.testing.capture_logs.
structlog.configure(
    wrapper_class=structlog.make_filtering_bound_logger(40),
    processors=[structlog.processors.KeyValueRenderer()],
)
