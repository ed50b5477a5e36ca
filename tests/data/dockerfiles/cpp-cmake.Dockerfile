# syntax=docker/dockerfile:1.7
ARG UBUNTU=24.04
FROM ubuntu:${UBUNTU} AS toolchain
ENV DEBIAN_FRONTEND=noninteractive
RUN --mount=type=cache,target=/var/cache/apt,sharing=locked \
    --mount=type=cache,target=/var/lib/apt,sharing=locked \
    rm -f /etc/apt/apt.conf.d/docker-clean \
 && apt-get update \
 && apt-get install -y --no-install-recommends cmake ninja-build g++ ccache git ca-certificates

FROM toolchain AS sources
ADD --checksum=sha256:24454f2e0e3a8a8c2a1e1fbe3e0f1b2c3d4e5f60718293a4b5c6d7e8f9012345 \
    https://github.com/fmtlib/fmt/releases/download/10.2.1/fmt-10.2.1.zip /deps/fmt.zip
ADD --keep-git-dir=true https://github.com/google/googletest.git#v1.14.0 /deps/googletest
ADD --link --chown=1000:1000 third_party/ /deps/third_party/

FROM sources AS build
WORKDIR /src
COPY --link . .
ENV CCACHE_DIR=/ccache CMAKE_GENERATOR=Ninja
RUN --mount=type=cache,target=/ccache \
    cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER_LAUNCHER=ccache \
 && cmake --build build --parallel \
 && cmake --install build --prefix /opt/app

FROM build AS test
RUN --network=none ctest --test-dir build --output-on-failure
RUN --security=insecure --mount=type=tmpfs,target=/tmp,size=64m ./build/tests/sandbox_test

FROM ubuntu:${UBUNTU} AS runtime
COPY --from=build /opt/app /opt/app
RUN --mount=type=bind,from=build,source=/src/scripts/install-runtime.sh,target=/tmp/install.sh \
    sh /tmp/install.sh
ENV PATH=/opt/app/bin:$PATH
ENTRYPOINT ["app"]
CMD ["--help"]
