#!/usr/bin/perl

# The shape of the code, checked rather than claimed:
#
# - tools/circles.pl, which "make shape" (a step of "make test") runs on
#   the module's object files, finds a call circle between files when one
#   is there (two and three files, made here), and not where calls go one
#   way or stay inside a file, nor through data symbols;
# - no upload file but a protocol's front end and the module file names a
#   protocol: the driver, the reply, the IDs, the names and the GCS client
#   know none.

use strict;
use warnings;

use FindBin;
use File::Temp qw(tempdir);
use Test::More;

my $top = "$FindBin::Bin/..";
my $circles = "$top/tools/circles.pl";
my $dir = tempdir(CLEANUP => 1);

sub obj {
    my ($name, $code) = @_;
    open my $f, '>', "$dir/$name.c" or die "$name.c: $!";
    print $f $code;
    close $f;
    system('cc', '-c', '-o', "$dir/$name.o", "$dir/$name.c") == 0
        or die "cc $name.c failed";
    return "$dir/$name.o";
}

sub circles {
    my $out = `$circles @_ 2>&1`;
    return ($? >> 8, $out);
}

my $a = obj('a', "int b1(void); int a1(void) { return b1(); }\n"
               . "int a2(void) { return 2; }\n");
my $b = obj('b', "int a2(void); int c1(void);\n"
               . "int b1(void) { return a2() + c1(); }\n");
my $c = obj('c', "int c1(void) { return 3; }\n");

my ($rc, $out) = circles($a, $b, $c);
is($rc, 1, 'a -> b -> a: a circle');
like($out, qr/circle between a\.c b\.c:/, 'it names the files');
like($out, qr/a\.c -> b\.c: b1/, 'and the calls that close it: a -> b');
like($out, qr/b\.c -> a\.c: a2/, 'and b -> a');
unlike($out, qr/c\.c/, 'c, called only, is not in it');

my $one = obj('one', "int two(void); int three(void);\n"
                   . "int one(void) { return two(); }\n"
                   . "int tail(void) { return three(); }\n");
my $two = obj('two', "int three(void); int two(void) { return three(); }\n");
my $three = obj('three', "int tail(void); int three(void) { return tail(); }\n");

($rc, $out) = circles($one, $two, $three);
is($rc, 1, 'one -> two -> three -> one: a circle');
like($out, qr/circle between one\.c three\.c two\.c:/, 'all three named');

my $d = obj('d', "int e1(void); static int d2(void) { return 1; }\n"
               . "int d1(void) { return e1() + d2(); }\n");
my $e = obj('e', "extern int d_table[4]; int e1(void) { return d_table[0]; }\n");
my $dt = obj('dt', "int d1(void); int d_table[4];\n"
                 . "int (*dp)(void) = d1;\n");

($rc, $out) = circles($d, $e, $dt);
is($rc, 0, 'calls one way, data and function pointers are no circle')
    or diag $out;

# the module's own objects, when built (make shape runs on them too)

my $objs = $ENV{CLOUDAUTH_OBJS} // "$top/build/nginx/objs/addon/ngx_cloudauth_module";

SKIP: {
    skip "no object files in $objs (make builds them)", 1
        unless glob "$objs/*.o";
    ($rc, $out) = circles($objs);
    is($rc, 0, 'no call circle between the module\'s files') or diag $out;
}

# protocols are named by their front ends and the module file only

my @generic = ((map { "$top/ngx_cloudauth_module/ngx_http_cloudauth_upload_$_" }
                qw(driver.c reply.c id.c name.c plain.c resume.c)),
               (map { "$top/ngx_cloudauth_module/ngx_cloudauth_$_" }
                qw(gcs.c gcs.h gcs_parse.c)));

for my $f (@generic) {
    open my $fh, '<', $f or die "$f: $!";
    my @hits;
    while (<$fh>) {
        push @hits, "$.: $_" if /\btus\b|ietf|draft/i;
    }
    close $fh;
    (my $short = $f) =~ s{.*/}{};
    is(join('', @hits), '', "$short names no protocol");
}

done_testing;
