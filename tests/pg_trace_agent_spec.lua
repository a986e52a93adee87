-- tests/trace_agent_spec.lua again, with memory on PostgreSQL (tests/support/backend.lua).
require("support.backend").rerun("tests/trace_agent_spec.lua", _ENV)
