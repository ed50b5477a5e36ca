#!/bin/sh
echo "hello from memobuild"
