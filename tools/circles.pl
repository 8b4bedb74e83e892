#!/usr/bin/perl
# Call circles between source files, read from their object files.
#
#   tools/circles.pl DIR|FILE.o ...
#
# For each object file, nm says which function symbols it defines (T, t is
# file-local and left out) and which it uses (U).  A use of a function that
# another of the given files defines is an edge between the two files.
# Data symbols (module tables, variables: D, B, R) are left out: they are
# shared state, not calls.  Any strongly connected set of two or more files
# is a circle: each is printed with the calls that close it, and the exit
# status is 1.  With -v the whole graph is printed too.

use strict;
use warnings;

my $verbose = 0;
if (@ARGV && $ARGV[0] eq '-v') {
    $verbose = 1;
    shift;
}

die "usage: $0 [-v] DIR|FILE.o ...\n" unless @ARGV;

my @objs;
for my $a (@ARGV) {
    if (-d $a) {
        push @objs, sort glob("$a/*.o");
    } else {
        push @objs, $a;
    }
}

die "$0: no object files in @ARGV\n" unless @objs;

my (%defines, %uses);

for my $o (@objs) {
    (my $name = $o) =~ s{.*/}{};
    $name =~ s/\.o$/.c/;

    open(my $nm, '-|', 'nm', '--defined-only', $o) or die "nm $o: $!\n";
    while (<$nm>) {
        my ($type, $sym) = (split)[1, 2];
        next unless defined $sym;
        $defines{$sym} = $name if $type eq 'T';
    }
    close $nm or die "nm --defined-only $o failed\n";

    open($nm, '-|', 'nm', '--undefined-only', $o) or die "nm $o: $!\n";
    while (<$nm>) {
        my $sym = (split)[-1];
        $uses{$name}{$sym} = 1 if defined $sym;
    }
    close $nm or die "nm --undefined-only $o failed\n";
}

# file -> file -> [functions]
my %edge;
for my $file (sort keys %uses) {
    for my $sym (sort keys %{ $uses{$file} }) {
        my $to = $defines{$sym};
        next if !defined $to || $to eq $file;
        push @{ $edge{$file}{$to} }, $sym;
    }
}

if ($verbose) {
    for my $f (sort keys %edge) {
        for my $t (sort keys %{ $edge{$f} }) {
            print "$f -> $t: @{ $edge{$f}{$t} }\n";
        }
    }
}

# Tarjan's strongly connected components

my ($index, @stack, %on, %idx, %low, @sccs) = (0);

sub visit {
    my ($v) = @_;

    $idx{$v} = $low{$v} = $index++;
    push @stack, $v;
    $on{$v} = 1;

    for my $w (sort keys %{ $edge{$v} || {} }) {
        if (!defined $idx{$w}) {
            visit($w);
            $low{$v} = $low{$w} if $low{$w} < $low{$v};
        } elsif ($on{$w}) {
            $low{$v} = $idx{$w} if $idx{$w} < $low{$v};
        }
    }

    if ($low{$v} == $idx{$v}) {
        my @scc;
        my $w;
        do {
            $w = pop @stack;
            $on{$w} = 0;
            push @scc, $w;
        } while ($w ne $v);
        push @sccs, [sort @scc] if @scc > 1;
    }
}

my %files = map { $_ => 1 } (keys %uses, values %defines);
for my $v (sort keys %files) {
    visit($v) unless defined $idx{$v};
}

if (!@sccs) {
    printf "no call circle between %d files\n", scalar @objs;
    exit 0;
}

for my $scc (@sccs) {
    my %in = map { $_ => 1 } @$scc;
    print "call circle between @$scc:\n";
    for my $f (@$scc) {
        for my $t (sort keys %{ $edge{$f} }) {
            next unless $in{$t};
            print "    $f -> $t: @{ $edge{$f}{$t} }\n";
        }
    }
}

exit 1;
