package CloudAuth::Test;

# Test harness for ngx_cloudauth, in the spirit of nginx-tests' Test::Nginx:
# a temporary directory, free loopback ports held until their server starts
# (by a process of their own, see "ports" below),
# a CA and a server certificate, a Google service-account key, the fake
# token endpoint and echo upstream (CloudAuth::FakeGoogle), and nginx
# (master + 2 workers, daemon off) started and stopped around the test.
#
#   my $t = CloudAuth::Test->new;          # dir, PKI, sa.json, fakes up
#   $t->run(<<'EOF');                      # http{} body; nginx started
#       cloudauth_credential google type=google_service_account
#           key_file=%%KEY_FILE%% scopes=%%SCOPES%%;
#       server { listen 127.0.0.1:%%PORT%%; ... }
#   EOF
#   my $r = $t->http_get('/api/x');        # {status, headers, body, latency}
#   $t->check_log_ok;                      # stops nginx, no alert/crit/emerg
#
# Environment:
#   TEST_NGINX_BINARY    nginx to run (default /usr/sbin/nginx)
#   TEST_NGINX_MODULE    module to load
#                        (default build/ngx_http_cloudauth_module.so)
#   TEST_NGINX_LEAVE=1   keep the temporary directory and print its path
#   TEST_NGINX_PRELOAD   put into nginx's LD_PRELOAD (the ASan runtime)
#   TEST_NGINX_VALGRIND=1
#       run nginx under "valgrind --leak-check=full --error-exitcode=99",
#       master_process still on (valgrind follows the forked workers), one
#       log per process in valgrind.PID.log; check_log() reports errors and
#       definite leaks from them, and time bounds are multiplied by tf().
#
# Placeholders in configurations: %%PORT%% (nginx), %%TOKEN_PORT%%,
# %%UPSTREAM_PORT%%, %%PORT_<NAME>%% (any other port, allocated on first
# use), %%TESTDIR%%, %%MODULE%%, %%CA%%, %%KEY_FILE%%, %%TOKEN_URL%%,
# %%SCOPES%% (the default scopes, comma-separated).
#
# HTTP/2 the way the nginx run has it: nginx 1.25.1 has the "http2"
# directive and deprecates the "http2" parameter of "listen" (a [warn] at
# every start), 1.22 has only the parameter.  A server that speaks HTTP/2
# writes both placeholders; the run's nginx picks (nginx_version()):
#
#   listen 127.0.0.1:%%PORT_H2%% %%HTTP2%%;    "http2" before 1.25.1, else ""
#   %%HTTP2_ON%%                               "http2 on;" from 1.25.1, else ""
#
# ("http2 on" is per server: from 1.25.1 every listen of that server speaks
# HTTP/2, over TLS through ALPN, and in plain text to a client that opens
# with HTTP/2's preface.)

use strict;
use warnings;

use Cwd qw(abs_path);
use File::Basename qw(dirname);
use File::Temp qw(tempdir);
use IO::Handle;
use IO::Select;
use IO::Socket::INET;
use JSON::PP ();
use POSIX qw(WNOHANG);
use Socket qw(AF_UNIX SOCK_STREAM PF_UNSPEC);
use Test::More ();
use Time::HiRes qw(time sleep);

use CloudAuth::FakeGoogle;

our $ROOT = abs_path(dirname(abs_path(__FILE__)) . '/../../..');
our @SCOPES = @CloudAuth::FakeGoogle::SCOPES;

my %live;

sub new {
    my ($class, %o) = @_;

    my $dir = tempdir('cloudauth-XXXXXX', TMPDIR => 1,
                      CLEANUP => !$ENV{TEST_NGINX_LEAVE});

    # nginx started as root runs its workers as nobody, which must be able
    # to read the CA certificate
    chmod 0755, $dir;

    my $self = bless {
        dir => $dir,
        binary => $ENV{TEST_NGINX_BINARY} || '/usr/sbin/nginx',
        module => $ENV{TEST_NGINX_MODULE}
                  || "$ROOT/build/ngx_http_cloudauth_module.so",
        ports => {}, held => {}, fakes => [], keys => {}, owner => $$,
    }, $class;

    $live{$self} = $self;

    $self->port($_) for qw(nginx token upstream);
    $self->make_pki;
    $self->{key} = $self->make_key(file => 'sa.json');
    $self->token_set;
    $self->start_fakes unless defined $o{fakes} && !$o{fakes};

    return $self;
}

sub dir { $_[0]{dir} }
sub key { $_[0]{key} }
sub token_url { 'https://127.0.0.1:' . $_[0]->port('token') . '/token' }

# time factor: bounds are multiplied by it (10 under valgrind)
sub tf { $ENV{TEST_NGINX_VALGRIND} ? 10 : 1 }

# ports -----------------------------------------------------------------

# A port is reserved from its allocation until its server starts: a
# listening socket bound to it keeps anyone else from taking it.  These
# sockets are held by a process of their own, the port keeper, and never by
# this one.  Were they held here, every process this one forks (a fake
# server, a client, a browser's driver) would inherit them, and nginx's
# bind() would fail with "Address already in use" for as long as such a
# child had not closed its copy, however early it closes it: the parent
# goes on at once.  The keeper is forked once, before this process holds
# any reserved socket, closes every descriptor it inherited, and is the only
# process that ever has them; release_port() returns once the keeper has
# closed the socket, so the port is free when it returns, whatever this
# process has forked.  A fake server binds its port itself (fork_server()).
#
# The keeper serves "bind" (a new socket on a free port: its number) and
# "close PORT" ("ok") over a socketpair, and ends when this process does.

my %keeper;

sub keeper_call {
    my ($line) = @_;

    die "the port keeper is this test's, not a forked child's\n"
        if $keeper{pid} && $keeper{owner} != $$;
    keeper_start() unless $keeper{pid};

    my $s = $keeper{sock};
    print $s "$line\n" or die "port keeper: $!\n";
    my $answer = <$s> // die "port keeper: gone\n";
    chomp $answer;
    die "port keeper: $answer\n" if $answer =~ /^error/;
    return $answer;
}

sub keeper_start {
    socketpair(my $mine, my $its, AF_UNIX, SOCK_STREAM, PF_UNSPEC)
        or die "socketpair: $!\n";
    my $parent = $$;
    my $pid = fork // die "fork: $!\n";

    if ($pid) {
        close $its;
        $mine->autoflush(1);
        %keeper = (pid => $pid, sock => $mine, owner => $$);
        return;
    }

    close $mine;
    my $keep = fileno $its;

    # nothing inherited stays open here: a client connection of the test's,
    # say, must close when the test closes it.  Each is replaced by
    # /dev/null rather than closed: perl counts the descriptors its handles
    # use, and would never really close a new socket given a number that
    # an inherited handle still counts
    opendir my $d, '/proc/self/fd';
    my @fds = grep { /^\d+$/ && $_ > 2 && $_ != $keep } readdir $d;
    closedir $d;
    my $null = POSIX::open('/dev/null', POSIX::O_RDONLY());
    POSIX::dup2($null, $_) for grep { $_ != $null } @fds;
    POSIX::close($null);

    # nor the test's output: prove reads it up to its end
    open STDIN, '<', '/dev/null';
    open STDOUT, '>', '/dev/null';
    open STDERR, '>', '/dev/null';

    $SIG{$_} = 'IGNORE' for qw(INT HUP PIPE);
    $its->autoflush(1);
    my %held;
    my $sel = IO::Select->new($its);

    while (1) {
        POSIX::_exit(0) if getppid() != $parent;
        next unless $sel->can_read(1);
        my $line = <$its> // POSIX::_exit(0);
        chomp $line;

        if ($line eq 'bind') {
            my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1',
                                          LocalPort => 0, Listen => 1024,
                                          ReuseAddr => 1, Proto => 'tcp');
            if (!$s) {
                print $its "error: cannot get a free port: $!\n";
                next;
            }
            $held{ $s->sockport } = $s;
            print $its $s->sockport, "\n";

        } elsif ($line =~ /^close (\d+)$/) {
            my $s = delete $held{$1};
            close $s if $s;
            print $its "ok\n";

        } else {
            print $its "error: $line?\n";
        }
    }
}

sub keeper_stop {
    return unless $keeper{pid} && $keeper{owner} == $$;
    local $?;
    close $keeper{sock};
    kill 'TERM', $keeper{pid};
    waitpid $keeper{pid}, 0;
    %keeper = ();
}

# a free loopback port, kept bound and listening (by the keeper) until its
# server starts
sub port {
    my ($self, $name) = @_;

    return $self->{ports}{$name} if $self->{ports}{$name};

    my $port = keeper_call('bind');
    $self->{held}{$name} = $port;
    return $self->{ports}{$name} = $port;
}

# the keeper closes the port's socket: nothing listens on it any more, and
# no process has it bound
sub release_port {
    my ($self, $name) = @_;
    $self->port($name);
    my $port = delete $self->{held}{$name};
    keeper_call("close $port") if $port;
    return $self->{ports}{$name};
}

# fork_server(NAME, SUB): a child process in a process group of its own,
# listening on port NAME, runs SUB->($listen_socket) (SUB does not return;
# the child ends when it does).  A port already given out is released by
# the keeper and bound again by the child (SO_REUSEADDR); a new one the
# child binds itself, on port 0.  Returns the child's pid once it listens
# (dies if it could not), and stop_fakes() ends it.
sub fork_server {
    my ($self, $name, $run) = @_;

    my $port = $self->{ports}{$name} ? $self->release_port($name) : 0;
    pipe my $r, my $w or die "pipe: $!\n";
    my $pid = fork // die "fork: $!\n";

    if (!$pid) {
        close $r;
        POSIX::setpgid(0, 0);
        my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1',
                                      LocalPort => $port, Listen => 1024,
                                      ReuseAddr => 1, Proto => 'tcp');
        syswrite $w, $s ? $s->sockport . "\n"
                        : "bind 127.0.0.1:$port: $!\n";
        POSIX::_exit(1) unless $s;
        close $w;
        eval { $run->($s) };
        print STDERR "$name: $@" if $@;
        POSIX::_exit(0);
    }

    close $w;
    my $answer = <$r> // "exited before it listened\n";
    close $r;

    if ($answer !~ /^(\d+)$/) {
        waitpid $pid, 0;
        die "server $name: $answer";
    }

    $self->{ports}{$name} = $1;
    push @{ $self->{fakes} }, $pid;
    return $pid;
}

# files -----------------------------------------------------------------

sub write_file {
    my ($self, $name, $content, $mode) = @_;
    my $path = $name =~ m{^/} ? $name : "$self->{dir}/$name";
    open my $fh, '>', $path or die "$path: $!";
    print $fh $content;
    close $fh;
    chmod $mode, $path if defined $mode;
    return $path;
}

sub read_file {
    my ($self, $name) = @_;
    my $path = $name =~ m{^/} ? $name : "$self->{dir}/$name";
    open my $fh, '<', $path or return '';
    local $/;
    return <$fh>;
}

# copy_in(RELPATH): a copy of the checkout's file or directory RELPATH in
# the test directory, readable by all; returns its path.  nginx started as
# root runs its workers as nobody, and a checkout may sit under a directory
# nobody cannot enter (root's home is 0700 on Debian), so nothing a worker
# reads at run time (a root for static files, say) may point into it.
sub copy_in {
    my ($self, $rel) = @_;

    (my $dst = "$self->{dir}/$rel") =~ s{/+$}{};

    system('mkdir', '-p', dirname($dst)) == 0
        && system('cp', '-R', "$ROOT/$rel", $dst) == 0
        && system('chmod', '-R', 'a+rX', $dst) == 0
        or die "copy_in $rel: failed\n";

    return $dst;
}

sub openssl {
    my ($self, $args) = @_;
    my $out = `cd $self->{dir} && openssl $args 2>&1`;
    die "openssl $args: $out" if $?;
}

# a CA, and a certificate it signs for 127.0.0.1 and localhost
sub make_pki {
    my ($self) = @_;

    $self->write_file('ca.cnf', <<'EOF');
[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
authorityKeyIdentifier = keyid
EOF

    $self->openssl('req -x509 -config ca.cnf -extensions ca -newkey rsa:2048'
                   . ' -nodes -days 3 -subj "/CN=cloudauth test CA"'
                   . ' -keyout ca.key -out ca.crt');
    $self->openssl('req -new -config ca.cnf -newkey rsa:2048 -nodes'
                   . ' -subj /CN=localhost -keyout server.key'
                   . ' -out server.csr');
    $self->openssl('x509 -req -in server.csr -CA ca.crt -CAkey ca.key'
                   . ' -CAcreateserial -days 3 -extfile ca.cnf'
                   . ' -extensions server -out server.crt');
    chmod 0644, "$self->{dir}/ca.crt";
}

# make_key(file => NAME, mode => 0600, FIELD => VALUE...): a fresh RSA-2048
# key written as a Google service-account JSON key and made known to the
# fake token endpoint; FIELDs override (undef deletes) fields of the key.
# Returns the key as a hash, with public_key and path added.
sub make_key {
    my ($self, %o) = @_;

    my $file = delete $o{file} // 'sa.json';
    my $mode = delete $o{mode} // 0600;
    (my $base = $file) =~ s/\.json$//;

    $self->openssl("genrsa -out $base.pem 2048");
    $self->openssl("rsa -in $base.pem -pubout -out $base.pub");

    my $kid = CloudAuth::FakeGoogle::random_hex(20);
    my $email = "$base-test\@cloudauth-test.iam.gserviceaccount.com";

    my %key = (
        type => 'service_account',
        project_id => 'cloudauth-test',
        private_key_id => $kid,
        private_key => $self->read_file("$base.pem"),
        client_email => $email,
        client_id => '1' . join('', map { int rand 10 } 1 .. 20),
        auth_uri => 'https://accounts.google.com/o/oauth2/auth',
        token_uri => $self->token_url,
        auth_provider_x509_cert_url =>
            'https://www.googleapis.com/oauth2/v1/certs',
        client_x509_cert_url =>
            "https://www.googleapis.com/robot/v1/metadata/x509/$email",
        universe_domain => 'googleapis.com',
    );

    for my $k (keys %o) {
        defined $o{$k} ? ($key{$k} = $o{$k}) : delete $key{$k};
    }

    my $path = $self->write_file($file,
        JSON::PP->new->canonical->pretty->encode(\%key), $mode);

    my $pub = $self->read_file("$base.pub");

    if ($key{private_key_id} && $key{client_email}) {
        my $file = "$self->{dir}/fake_keys.json";
        my $known = CloudAuth::FakeGoogle::read_json($file) || {};
        $known->{ $key{private_key_id} } = {
            client_email => $key{client_email}, public_key => $pub };
        CloudAuth::FakeGoogle::write_json($file, $known);
    }

    $self->{keys}{$file} = { %key, public_key => $pub, path => $path };
    return $self->{keys}{$file};
}

# fakes -----------------------------------------------------------------

sub start_fakes {
    my ($self) = @_;

    $self->start_fake(token => tls => { cert => "$self->{dir}/server.crt",
                                        key => "$self->{dir}/server.key" },
        handler => CloudAuth::FakeGoogle::token_handler(
            dir => $self->{dir}, url => $self->token_url));

    $self->start_fake(upstream => handler =>
        CloudAuth::FakeGoogle::upstream_handler(dir => $self->{dir}));
}

# start_fake(PORTNAME, handler => SUB, tls => {...}): a forking server on
# port PORTNAME (fork_server)
sub start_fake {
    my ($self, $name, %o) = @_;

    return $self->fork_server($name, sub {
        CloudAuth::FakeGoogle->serve(%o, name => $name, listen => $_[0],
                                     dir => $self->{dir});
    });
}

sub stop_fakes {
    my ($self) = @_;
    local $?;

    for my $pid (@{ $self->{fakes} }) {
        kill 'TERM', $pid, -$pid;
        waitpid $pid, 0;
        kill 'KILL', -$pid;
    }

    $self->{fakes} = [];
}

# token_set(%behaviour): how the token endpoint answers from now on
#   status => N, error => 'invalid_grant', error_description => '...',
#   body => 'raw', delay => SECONDS, expires_in => N, retry_after => N,
#   date_offset => SECONDS, drop => 1, expect_scope => 'a b'
# token_set() restores the default: verified grants get fresh tokens
sub token_set {
    my ($self, %b) = @_;
    CloudAuth::FakeGoogle::write_json("$self->{dir}/fake_token.json", \%b);
}

sub token_requests {
    my ($self) = @_;
    my $log = "$self->{dir}/fake_token.log";
    return CloudAuth::FakeGoogle::read_json_lines($log);
}

sub token_count { scalar(my @r = $_[0]->token_requests) }

# (now, max): token requests the endpoint has in flight, and the most it
# had at once since the start or token_in_flight_reset()
sub token_in_flight {
    my ($self) = @_;
    my ($now, $max) = split ' ', $self->read_file('fake_token.inflight')
                                 // '0 0';
    return ($now // 0, $max // 0);
}

sub token_in_flight_reset {
    my ($self) = @_;
    my ($now) = $self->token_in_flight;
    $self->write_file('fake_token.inflight', "$now $now");
}

sub issued_tokens {
    my ($self) = @_;
    return map { $_->{token} // () } $self->token_requests;
}

# failure reasons of the token requests that did not pass verification
sub token_unverified {
    my ($self) = @_;
    return map { $_->{reason} // 'not verified' } grep { !$_->{verified} }
           $self->token_requests;
}

sub token_verified_ok {
    my ($self, $name) = @_;
    my @bad = $self->token_unverified;
    Test::More::is(join("\n", @bad), '',
                   $name // 'every token request passed verification');
}

sub upstream_requests {
    my ($self) = @_;
    return CloudAuth::FakeGoogle::read_json_lines("$self->{dir}/upstream.log");
}

# the upstream answers 401 to this token from now on
sub revoke {
    my ($self, $token) = @_;
    open my $fh, '>>', "$self->{dir}/revoked.txt" or die "revoked.txt: $!";
    print $fh "$token\n";
    close $fh;
}

# nginx -----------------------------------------------------------------

sub expand {
    my ($self, $text) = @_;

    my %v = (
        PORT => sub { $self->port('nginx') },
        TOKEN_PORT => sub { $self->port('token') },
        UPSTREAM_PORT => sub { $self->port('upstream') },
        TESTDIR => sub { $self->{dir} },
        MODULE => sub { $self->{module} },
        CA => sub { "$self->{dir}/ca.crt" },
        KEY_FILE => sub { "$self->{dir}/sa.json" },
        TOKEN_URL => sub { $self->token_url },
        SCOPES => sub { join ',', @SCOPES },
        HTTP2 => sub { $self->has_http2_directive ? '' : 'http2' },
        HTTP2_ON => sub { $self->has_http2_directive ? 'http2 on;' : '' },
    );

    $text =~ s{%%(\w+)%%}{
        $v{$1} ? $v{$1}->()
        : $1 =~ /^PORT_(\w+)$/ ? $self->port(lc $1)
        : die "unknown placeholder %%$1%%\n"
    }ge;

    return $text;
}

# the version of the nginx binary run, "1.22.1"
my %versions;

sub nginx_version {
    my ($self) = @_;
    my $bin = $self->{binary};
    return $versions{$bin} //= do {
        my $out = `$bin -v 2>&1`;
        $out =~ m{nginx/(\d+\.\d+\.\d+)} or die "$bin -v: $out";
        $1;
    };
}

# true if the nginx run is at least version V ("1.25.1")
sub nginx_at_least {
    my ($self, $v) = @_;
    my @have = split /\./, $self->nginx_version;
    my @want = split /\./, $v;
    for my $i (0 .. 2) {
        return ($have[$i] // 0) > ($want[$i] // 0)
            if ($have[$i] // 0) != ($want[$i] // 0);
    }
    return 1;
}

sub has_http2_directive { $_[0]->nginx_at_least('1.25.1') }

# the whole configuration around an http{} body; workers => N (2),
# connections => N (1024)
sub conf {
    my ($self, $http, %o) = @_;

    my $log = $o{error_log} // '%%TESTDIR%%/error.log';
    my $workers = $o{workers} // 2;
    my $connections = $o{connections} // 1024;

    return $self->expand(<<"EOF");
load_module %%MODULE%%;

worker_processes $workers;
master_process on;
daemon off;
error_log $log debug;
pid %%TESTDIR%%/nginx.pid;

events {
    worker_connections $connections;
}

http {
    access_log %%TESTDIR%%/access.log;

    client_body_temp_path %%TESTDIR%%/body;
    proxy_temp_path %%TESTDIR%%/proxy;
    fastcgi_temp_path %%TESTDIR%%/fastcgi;
    uwsgi_temp_path %%TESTDIR%%/uwsgi;
    scgi_temp_path %%TESTDIR%%/scgi;

$http
}
EOF
}

# write_conf(HTTP_BODY, %conf_options) or write_conf(FULL, raw => 1)
sub write_conf {
    my ($self, $text, %o) = @_;
    $text = $o{raw} ? $self->expand($text) : $self->conf($text, %o);
    ($self->{workers}) = $text =~ /^\s*worker_processes\s+(\d+)/m;
    $self->write_file('nginx.conf', $text);
}

sub nginx_cmd {
    my ($self, @args) = @_;

    my @cmd = ($self->{binary}, '-e', 'stderr', '-p', "$self->{dir}/", @args);

    # not "nginx -t": it exits on purpose with what it allocated
    unshift @cmd, 'valgrind', '--quiet', '--leak-check=full',
        '--show-leak-kinds=definite', '--errors-for-leak-kinds=definite',
        '--error-exitcode=99', "--suppressions=$ROOT/t/valgrind.supp",
        "--log-file=$self->{dir}/valgrind.%p.log"
        if $ENV{TEST_NGINX_VALGRIND} && !grep { $_ eq '-t' } @args;

    return @cmd;
}

# run(HTTP_BODY, %o) or run(): writes nginx.conf (unless no text) and starts
# nginx; dies with nginx's stderr if it does not come up
sub run {
    my ($self, $text, %o) = @_;

    $self->write_conf($text, %o) if defined $text;
    die "nginx already running\n" if $self->{pid};

    $self->release_port($_) for keys %{ $self->{held} };

    my $pid = fork // die "fork: $!";

    if (!$pid) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', "$self->{dir}/stderr.log";
        open STDERR, '>&', \*STDOUT;
        $ENV{LD_PRELOAD} = $ENV{TEST_NGINX_PRELOAD}
            if $ENV{TEST_NGINX_PRELOAD};
        # nginx takes NGINX for inherited listening sockets (a binary
        # upgrade): a stray one ("make ... NGINX=x") is an [emerg]
        delete $ENV{NGINX};
        no warnings "exec";
        exec $self->nginx_cmd('-c', "$self->{dir}/nginx.conf");
        POSIX::_exit(127);
    }

    $self->{pid} = $pid;

    my $end = time + 10 * tf();

    while (time < $end) {
        if (waitpid($pid, WNOHANG) == $pid) {
            delete $self->{pid};
            die "nginx exited ($?):\n" . $self->read_file('stderr.log')
                . $self->tail_error_log;
        }

        my @w = $self->worker_pids;
        return $self if @w == ($self->{workers} // 1) && $self->probe;
        sleep 0.05;
    }

    die "nginx did not come up:\n" . $self->read_file('stderr.log');
}

sub tail_error_log {
    my ($self) = @_;
    my @l = grep { !/\[debug\]/ } split /\n/, $self->error_log;
    splice @l, 0, @l - 20 if @l > 20;
    return join '', map { "$_\n" } @l;
}

sub probe {
    my ($self) = @_;
    return IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                 PeerPort => $self->port('nginx')) ? 1 : 0;
}

# the master's pid, and the pids of its live children
sub master_pid { $_[0]{pid} }

sub worker_pids {
    my ($self) = @_;
    my $master = $self->{pid} or return ();
    my @pids;

    for my $stat (glob '/proc/[0-9]*/stat') {
        open my $fh, '<', $stat or next;
        my $s = <$fh> // next;
        my ($pid, $state, $ppid) = $s =~ /^(\d+) \(.*\) (\S) (\d+)/s
            or next;
        push @pids, $pid if $ppid == $master && $state ne 'Z';
    }

    @pids = sort { $a <=> $b } @pids;
    return @pids;
}

# reload(HTTP_BODY?, %o): HUP, then waits until the new workers serve and
# the old ones are gone; returns 1, or 0 if that did not happen in time
sub reload {
    my ($self, $text, %o) = @_;

    $self->write_conf($text, %o) if defined $text;

    my %old = map { $_ => 1 } $self->worker_pids;
    kill 'HUP', $self->{pid} or die "no nginx to reload\n";

    my $end = time + 10 * tf();

    while (time < $end) {
        my @now = $self->worker_pids;
        my @new = grep { !$old{$_} } @now;
        my $n = $self->{workers} // 1;
        return 1 if @new == $n && @now == $n && $self->probe;
        sleep 0.05;
    }

    return 0;
}

# stop(): QUIT, then TERM, then KILL; nginx's exit status in {exit}, the
# signal that stopped it in {stopped_by}
sub stop {
    my ($self) = @_;
    local $?;

    my $pid = delete $self->{pid} or return;

    for my $sig (qw(QUIT TERM KILL)) {
        kill $sig, $pid;
        my $end = time + ($sig eq 'QUIT' ? 10 * tf() : 5);
        while (time < $end) {
            if (waitpid($pid, WNOHANG) == $pid) {
                $self->{exit} = $?;
                $self->{stopped_by} = $sig;
                return;
            }
            sleep 0.02;
        }
    }
}

sub DESTROY {
    my ($self) = @_;
    return if $self->{owner} != $$ || $self->{destroyed}++;
    $self->stop;
    $self->stop_fakes;
    print STDERR "# kept $self->{dir}\n" if $ENV{TEST_NGINX_LEAVE};
}

END {
    $_->DESTROY for values %live;
    %live = ();
    keeper_stop();
}

# nginx_t(HTTP_BODY) or nginx_t(FULL, raw => 1): "nginx -t" on it, with the
# error log in error-t.log; returns (exit code, stdout + stderr)
sub nginx_t {
    my ($self, $text, %o) = @_;

    $text = $o{raw} ? $self->expand($text)
          : $self->conf($text, error_log => '%%TESTDIR%%/error-t.log');
    my $conf = $self->write_file('test.conf', $text);

    my @cmd = $self->nginx_cmd('-t', '-c', $conf);
    local %ENV = %ENV;
    delete $ENV{NGINX};
    $ENV{LD_PRELOAD} = $ENV{TEST_NGINX_PRELOAD} if $ENV{TEST_NGINX_PRELOAD};

    my $out = `@cmd 2>&1`;
    return ($? >> 8, $out);
}

# HTTP client -------------------------------------------------------------

# request(path => P, method => GET, headers => {name => value | [values]},
#         body => B, port => N): the raw HTTP/1.0 request
sub request_text {
    my (%o) = @_;

    my $r = ($o{method} // 'GET') . " $o{path} HTTP/1.0\r\n";
    my %h = (Host => 'localhost', %{ $o{headers} || {} });
    $h{'Content-Length'} = length $o{body} if defined $o{body};

    for my $k (sort keys %h) {
        $r .= "$k: $_\r\n" for ref $h{$k} ? @{ $h{$k} } : $h{$k};
    }

    return $r . "\r\n" . ($o{body} // '');
}

sub parse_response {
    my ($raw) = @_;

    my ($head, $body) = split /\r?\n\r?\n/, $raw // '', 2;

    # interim responses (1xx) before the final one, kept in "interim"
    my @interim;
    while (($head // '') =~ m{^HTTP/\d\.\d 1\d\d} && defined $body) {
        my ($l, @ls) = split /\r?\n/, $head;
        my %ih = map { /^([^:]+):\s*(.*)$/ ? (lc $1 => $2) : () } @ls;
        push @interim, { status => ($l =~ m{^HTTP/\d\.\d (\d{3})})[0],
                         headers => \%ih };
        ($head, $body) = split /\r?\n\r?\n/, $body, 2;
    }

    my ($line, @lines) = split /\r?\n/, $head // '';
    my ($status) = ($line // '') =~ m{^HTTP/\d\.\d (\d{3})};

    my %h;
    for (@lines) {
        my ($k, $v) = /^([^:]+):\s*(.*)$/ or next;
        $h{ lc $k } = exists $h{ lc $k } ? "$h{lc $k}, $v" : $v;
    }

    return { status => $status // 0, headers => \%h, body => $body // '',
             raw => $raw // '', interim => \@interim };
}

# http_start(PATH, %headers): connects and sends, returns a handle;
# http_end(HANDLE): reads the answer (HTTP/1.0: up to the close).
# Header names starting with "-" are options: -method, -body, -port.
sub http_start {
    my ($self, $path, %h) = @_;

    my %o = (path => $path);
    $o{ substr $_, 1 } = delete $h{$_} for grep { /^-/ } keys %h;

    my $start = time;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $o{port} // $self->port('nginx'))
        or return { start => $start, error => "connect: $!" };

    $s->blocking(0);
    my $req = request_text(%o, headers => \%h);

    while (length $req) {
        my $n = syswrite $s, $req;
        if (!defined $n) {
            IO::Select->new($s)->can_write(1) and next;
            return { start => $start, error => "write: $!" };
        }
        substr $req, 0, $n, '';
    }

    return { sock => $s, start => $start, buf => '' };
}

sub http_end {
    my ($self, $h, $timeout) = @_;
    my @r = $self->collect([$h], $timeout);
    return $r[0];
}

# reads the answers on all handles at once; each gets latency in seconds
sub collect {
    my ($self, $handles, $timeout) = @_;

    my $end = time + ($timeout // 30 * tf());
    my %open = map { ($_->{sock} ? ("$_->{sock}" => $_) : ()) } @$handles;
    my $sel = IO::Select->new(map { $_->{sock} } values %open);

    while ($sel->count && time < $end) {
        for my $s ($sel->can_read($end - time)) {
            my $h = $open{"$s"};
            my $n = sysread $s, my $buf, 65536;
            next if !defined $n && $!{EAGAIN};

            if ($n) {
                $h->{buf} .= $buf;
                next;
            }

            $h->{latency} = time - $h->{start};
            $sel->remove($s);
            close $s;
        }
    }

    my @r;

    for my $h (@$handles) {
        my $r = parse_response($h->{buf});
        $r->{latency} = $h->{latency} // time - $h->{start};
        $r->{error} = $h->{error} // (defined $h->{latency} ? undef
                                                             : 'timed out');
        if ($h->{sock} && !defined $h->{latency}) {
            close $h->{sock};
        }
        push @r, $r;
    }

    return @r;
}

# http_get(PATH, %headers): {status, headers (lowercase names), body, raw,
# latency, error}; status 0 when there was no answer
sub http_get {
    my ($self, $path, %h) = @_;
    return $self->http_end($self->http_start($path, %h));
}

# burst(PATH, N, %headers): N connections made and requests sent before any
# answer is read; returns the N answers in order, each with its latency
sub burst {
    my ($self, $path, $n, %h) = @_;
    my @handles = map { $self->http_start($path, %h) } 1 .. $n;
    return $self->collect(\@handles);
}

# logs and secrets --------------------------------------------------------

sub error_log { $_[0]->read_file('error.log') }
sub access_log { $_[0]->read_file('access.log') }

# lines with [alert], [crit], [emerg], sanitizer or valgrind reports, and
# whether nginx, once stopped, exited 0 on QUIT
sub check_log {
    my ($self, @files) = @_;

    my @bad;

    for my $f ('error.log', 'stderr.log', @files) {
        push @bad, map { "$f: $_" }
                   grep { /\[(alert|crit|emerg)\]|Sanitizer|runtime error:/ }
                   split /\n/, $self->read_file($f);
    }

    # valgrind --quiet writes errors only: a log with anything is a report
    for my $f (glob "$self->{dir}/valgrind.*.log") {
        my @l = grep { /\S/ } split /\n/, $self->read_file($f);
        push @bad, map { "$f: $_" } @l[0 .. ($#l < 5 ? $#l : 5)] if @l;
    }

    push @bad, "nginx did not exit on QUIT in time ($self->{stopped_by})"
        if ($self->{stopped_by} // 'QUIT') ne 'QUIT';
    push @bad, "nginx exited with status $self->{exit}"
        if $self->{exit};

    return @bad;
}

# stops nginx (so shutdown is checked too) and asserts check_log is empty
sub check_log_ok {
    my ($self, $name) = @_;
    $self->stop;
    Test::More::is(join("\n", $self->check_log), '',
                   $name // 'no alert, crit, emerg or sanitizer report');
}

# what must never be logged: issued tokens, body lines of every private
# key made, assertions and their signatures
sub secrets {
    my ($self) = @_;

    my @s;

    for my $r ($self->token_requests) {
        push @s, $r->{token} if $r->{token};
        push @s, $r->{assertion}, (split /\./, $r->{assertion})[2]
            if $r->{assertion};
    }

    for my $k (values %{ $self->{keys} }) {
        push @s, grep { length > 20 && !/-----/ }
                 split /\n/, $k->{private_key} // '';
    }

    # tokens the other fakes issued or saw (CloudAuth::FakeProviders), and
    # what the test declared secret (add_secrets)
    for my $f (glob "$self->{dir}/fake_*.log") {
        next if $f =~ m{/fake_token\.log$};
        push @s, map { $_->{token} // () }
                 CloudAuth::FakeGoogle::read_json_lines($f);
    }

    push @s, @{ $self->{extra_secrets} || [] };

    my %seen;
    return grep { defined && length && !$seen{$_}++ } @s;
}

# add_secrets(S...): client secrets and the like, never to be logged
sub add_secrets {
    my ($self, @s) = @_;
    push @{ $self->{extra_secrets} }, @s;
}

# the secrets found in error.log, access.log, stderr.log and TEXTS
sub leaks {
    my ($self, @texts) = @_;
    return $self->leaks_in(
        (map { $self->read_file($_) } qw(error.log access.log stderr.log)),
        @texts);
}

# the secrets found in TEXTS only
sub leaks_in {
    my ($self, @texts) = @_;
    my $all = join "\n", @texts;
    return grep { index($all, $_) >= 0 } $self->secrets;
}

# polls COND every 50 ms for up to TIMEOUT seconds; true if it became true
sub wait_for {
    my ($self, $cond, $timeout) = @_;
    my $end = time + ($timeout // 10) * tf();
    while (time < $end) {
        return 1 if $cond->();
        sleep 0.05;
    }
    return $cond->() ? 1 : 0;
}

1;
