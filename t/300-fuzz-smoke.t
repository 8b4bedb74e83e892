#!/usr/bin/perl

# Smoke run of the libFuzzer targets (fuzz/fuzz_*.c, built by make
# fuzz-build into build/fuzz/bin): each for 3 seconds from its seeds in
# fuzz/corpus/, one test per target; a crash, a sanitizer report or a
# failed invariant fails it.  New inputs go to a temporary directory,
# crash inputs to build/fuzz/artifacts/smoke-TARGET-*.  Longer runs:
# make fuzz FUZZ_SECONDS=N.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use File::Path qw(make_path);
use File::Temp qw(tempdir);
use Test::More;
use CloudAuth::Test;

my $root = $CloudAuth::Test::ROOT;
my $out = $ENV{FUZZ_BUILD} || "$root/build/fuzz";
my $secs = $ENV{FUZZ_SMOKE_SECONDS} || 3;

# every target in fuzz/ must be built (make test builds them first): a
# missing one fails, it is never skipped
my @bins = map { m{/(fuzz_\w+)\.c$} ? "$out/bin/$1" : () }
           sort glob "$root/fuzz/fuzz_*.c";

for my $bin (grep { !-x } @bins) {
    fail("$bin is built (make fuzz-build)");
}

@bins = grep { -x } @bins;

my $tmp = tempdir('cloudauth-fuzz-XXXXXX', TMPDIR => 1, CLEANUP => 1);
make_path("$out/artifacts");

for my $bin (@bins) {
    my ($name) = $bin =~ m{/([^/]+)$};
    my $work = "$tmp/$name";
    my $log = "$tmp/$name.log";
    make_path($work);

    my @dirs = ($work, "$root/fuzz/corpus/$name");
    push @dirs, "$out/seeds/$name" if -d "$out/seeds/$name";

    system("$bin -max_total_time=$secs -print_final_stats=1 -timeout=20"
           . " -rss_limit_mb=2048 -max_len=65536"
           . " -artifact_prefix=$out/artifacts/smoke-$name- @dirs"
           . " >$log 2>&1");
    my $rc = $? >> 8;

    open my $fh, '<', $log or die "$log: $!";
    my @lines = <$fh>;
    close $fh;

    my ($runs) = map { /^stat::number_of_executed_units:\s*(\d+)/ ? $1 : () }
                 @lines;

    ok($rc == 0, "$name: no crash in ${secs} s (" . ($runs // '?')
                 . ' runs)')
        or diag join '', grep {
            /ERROR:|runtime error|assertion failed|Test unit written|#\d+ /
        } @lines[0 .. ($#lines < 200 ? $#lines : 200)];
}

done_testing;
