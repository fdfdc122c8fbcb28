import structlog


def _discard(logger, method_name, event_dict):
    raise structlog.DropEvent


# Tests run without the command line's logging set-up.  Every level passes the
# filter so that structlog.testing.capture_logs sees info lines; outside a
# capture the lines are discarded.
structlog.configure(
    wrapper_class=structlog.make_filtering_bound_logger(0),
    processors=[_discard],
    cache_logger_on_first_use=False,
)
