# corral: image busybox:1 -> corral-busybox:latest (the local test image; no registry);
# corral: the job-level `migrate` block moved into the group: corral parses `migrate` only
# there; Nomad copies a job-level one into each group that has none (api/tasks.go
# TaskGroup.Canonicalize), so the group sees the same strategy.
# Copyright IBM Corp. 2015, 2026
# SPDX-License-Identifier: BUSL-1.1

job "drain_deadline" {

  constraint {
    attribute = "${attr.kernel.name}"
    value     = "linux"
  }

  group "group" {

    migrate {
      max_parallel     = 1
      min_healthy_time = "30s"
    }

    count = 2

    task "task" {
      driver = "docker"

      config {
        image   = "corral-busybox:latest"
        command = "/bin/sh"
        args    = ["-c", "sleep 600"]
      }

      resources {
        cpu    = 256
        memory = 64
      }
    }
  }
}
