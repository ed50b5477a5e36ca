# escape=`
# syntax=docker/dockerfile:1

FROM mcr.microsoft.com/dotnet/framework/sdk:4.8-windowsservercore-ltsc2022 AS build
SHELL ["powershell", "-Command", "$ErrorActionPreference = 'Stop'; $ProgressPreference = 'SilentlyContinue';"]
WORKDIR C:\src
COPY . .
RUN nuget restore Service.sln; `
    msbuild Service.sln /p:Configuration=Release /p:OutputPath=C:\out `
      /p:Platform="Any CPU"

FROM mcr.microsoft.com/windows/servercore:ltsc2022
ENV SERVICE_HOME=C:\service `
    LOG_DIR=C:\logs
RUN New-Item -ItemType Directory -Path $env:LOG_DIR | Out-Null; `
    # grant the container user access to the log directory
    icacls $env:LOG_DIR /grant 'Users:(OI)(CI)M'
COPY --from=build C:\out C:\service
WORKDIR C:\service
USER ContainerUser
EXPOSE 80
ENTRYPOINT ["C:\\service\\Service.exe"]
