# syntax=docker/dockerfile:1
FROM maven:3.9-eclipse-temurin-21 AS deps
WORKDIR /build
COPY pom.xml .
COPY .mvn/ .mvn/
RUN --mount=type=cache,target=/root/.m2 mvn -B -q dependency:go-offline

FROM deps AS package
COPY src/ src/
RUN --mount=type=cache,target=/root/.m2 \
    mvn -B -q package -DskipTests \
    && java -Djarmode=layertools -jar target/*.jar extract --destination target/extracted

FROM eclipse-temurin:21-jre-alpine AS runtime
ARG UID=10001
RUN adduser -D -H -u ${UID} spring
USER spring:spring
WORKDIR /app
COPY --from=package /build/target/extracted/dependencies/ ./
COPY --from=package /build/target/extracted/spring-boot-loader/ ./
COPY --from=package /build/target/extracted/snapshot-dependencies/ ./
COPY --from=package /build/target/extracted/application/ ./
ENV JAVA_TOOL_OPTIONS="-XX:MaxRAMPercentage=75 -XX:+ExitOnOutOfMemoryError"
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=40s --start-interval=2s \
    CMD ["wget", "-q", "--spider", "http://localhost:8080/actuator/health"]
ENTRYPOINT ["java", "org.springframework.boot.loader.launch.JarLauncher"]
