#!/bin/sh
echo "$1 from a kiln build (stage: build, user: $(id -u))"
