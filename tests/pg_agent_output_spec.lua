-- tests/agent_output_spec.lua again, with memory on PostgreSQL (tests/support/backend.lua).
require("support.backend").rerun("tests/agent_output_spec.lua", _ENV)
