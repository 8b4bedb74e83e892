#!/usr/bin/perl

# Unit tests of the upload's pure parts, in C: CRC32C (hardware and table)
# and the streaming multipart/form-data parser fed in every slicing
# (t/unit/upload_unit.c).  Compiled with AddressSanitizer and UBSan against
# the configured nginx tree the module was built in (objs/ngx_auto_config.h),
# run, its TAP passed on.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use File::Basename qw(dirname);
use File::Temp qw(tempdir);
use Test::More;
use CloudAuth::Test;

my $root = $CloudAuth::Test::ROOT;
my $module = $ENV{TEST_NGINX_MODULE}
             || "$root/build/ngx_http_cloudauth_module.so";
my $ngx = dirname($module) . '/nginx';

plan skip_all => "no configured nginx tree at $ngx"
    unless -e "$ngx/objs/ngx_auto_config.h";
plan skip_all => 'no cc' unless grep { -x "$_/cc" } split /:/, $ENV{PATH};

my $dir = tempdir('cloudauth-unit-XXXXXX', TMPDIR => 1, CLEANUP => 1);
my $src = "$root/ngx_cloudauth_module";

# the include directories configure chose for that tree (objs/Makefile's
# ALL_INCS: a tree with HTTP/3 needs src/event/quic, say), relative ones
# made absolute
my $mk = do { local $/; open my $fh, '<', "$ngx/objs/Makefile"; <$fh> // '' };
my ($all) = $mk =~ /^ALL_INCS\s*=\s*((?:.*\\\n)*.*)$/m;
my @dirs = ($all // '') =~ /-I\s*(\S+)/g;
@dirs = qw(objs src/core src/event src/event/modules src/os/unix src/http
           src/http/modules src/http/v2) unless @dirs;
my $inc = join ' ', map { m{^/} ? "-I$_" : "-I$ngx/$_" } @dirs;
my $pc = `pkg-config --cflags libcurl jansson openssl 2>/dev/null`;
chomp $pc;

# with AddressSanitizer and UBSan: any report fails the run
my $san = '-fsanitize=address,undefined -fno-sanitize-recover=all'
          . ' -fno-omit-frame-pointer';
my $out = `cc -O1 -g -Wall -Werror $san $inc -I$src $pc -o $dir/upload_unit $root/t/unit/upload_unit.c $src/ngx_cloudauth_multipart.c $src/ngx_cloudauth_crc32c.c 2>&1`;
is($?, 0, 'upload_unit.c compiles') or diag $out;

my @tap = `ASAN_OPTIONS=detect_leaks=1 $dir/upload_unit 2>$dir/stderr`;
is($?, 0, 'upload_unit passes, no sanitizer report')
    or diag `cat $dir/stderr`;

for (@tap) {
    if (/^(not )?ok \d+ - (.*)$/) {
        ok(!$1, $2);
    } elsif (/^#/) {
        note $_;
    }
}

done_testing;
