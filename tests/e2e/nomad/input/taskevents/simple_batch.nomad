# corral: the job-level `task` shorthand is wrapped in `group "simple_batch"`, the group
# Nomad's jobspec2 (parse_job.go, normalizeJob) makes of it; corral's parser has no shorthand.
# Copyright IBM Corp. 2015, 2026
# SPDX-License-Identifier: BUSL-1.1

job "simple_batch" {
  type        = "batch"
  datacenters = ["dc1"]

  constraint {
    attribute = "${attr.kernel.name}"
    value     = "linux"
  }

  group "simple_batch" {
    task "simple_batch" {
      driver = "raw_exec"

      config {
        command = "sleep"
        args    = ["1"]
      }
    }
  }
}
