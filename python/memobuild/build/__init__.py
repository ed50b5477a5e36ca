"""Running a build plan: rootfs trees, step execution (COPY/ADD, RUN), layers and images."""
