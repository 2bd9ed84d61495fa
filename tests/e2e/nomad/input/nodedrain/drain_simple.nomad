# corral: image busybox:1 -> corral-busybox:latest (the local test image; no registry).
# Copyright IBM Corp. 2015, 2026
# SPDX-License-Identifier: BUSL-1.1

job "drain_simple" {

  constraint {
    attribute = "${attr.kernel.name}"
    value     = "linux"
  }

  group "group" {

    task "task" {
      driver = "docker"

      config {
        image   = "corral-busybox:latest"
        command = "/bin/sh"
        args    = ["-c", "sleep 300"]
      }

      resources {
        cpu    = 256
        memory = 128
      }
    }
  }
}
