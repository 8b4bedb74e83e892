package CloudAuth::FakeGCS;

# A fake Google Cloud Storage JSON API for the upload tests: resumable
# uploads only, served over TLS with the test CA by CloudAuth::FakeGoogle's
# forking server, and as strict as GCS where it matters:
#
#   POST /upload/storage/v1/b/BUCKET/o?uploadType=resumable&name=NAME
#        [&ifGenerationMatch=0]                     -> 200 + Location
#   PUT  SESSION  Content-Range: bytes X-Y/*        -> 308 + Range
#   PUT  SESSION  Content-Range: bytes X-Y/TOTAL    -> 200 + object JSON
#   PUT  SESSION  Content-Range: bytes */TOTAL      (empty final chunk)
#   PUT  SESSION  Content-Range: bytes */*          (status query)
#   DELETE SESSION                                  -> 499, session gone
#
# It refuses a token the fake token endpoint did not issue, a chunk that
# does not start where the stored bytes end, a non-final chunk that is not
# a multiple of 256 KiB, a length that is not the range's, a final chunk
# whose X-Goog-Hash is not the data's, an object name GCS would refuse, and
# an existing object under ifGenerationMatch=0 (412).  It reports Range
# honestly and can keep fewer bytes than were sent.
#
# Faults, from gcs_faults.json in the test directory (read each request):
#   init_status => N, init_times => K      the first K session starts get N
#   fail_after => BYTES, fail_status => N  the chunk crossing BYTES keeps
#                                          only the 256 KiB-multiple before
#                                          it and gets N (default 503), once
#   drop_after => BYTES                    the same, but the connection is
#                                          dropped without an answer, once
#   stall_after => BYTES, stall => SECS    the same, but nothing is answered
#                                          for SECS, then dropped, once
#   zero_after => BYTES                    the chunk crossing BYTES gets 308
#                                          but nothing of it is kept, once
#   short => 1                             each non-final chunk keeps 256 KiB
#                                          less than it carried
#   session_404 => 1                       chunks get 404 (session expired)
#   query_status => N                      the next status query gets N,
#                                          once
#   corrupt => 1                           the first byte of each chunk is
#                                          stored altered (the final hash
#                                          check then fails)
#   delay => SECS                          every chunk is answered late
#                                          (one at a time: under the lock)
#   slow => SECS                           every chunk is answered late, all
#                                          sessions at once (a slow network)
#   error_message => TEXT                  the message of the injected
#                                          failures above (init_status,
#                                          fail_status)
#   location => URL                        session starts answer with a
#                                          Location on URL (instead of the
#                                          fake's own), path and query kept
#
# State under DIR/gcs/: sessions/ID.json + ID.data, objects/BUCKET/HEX.json
# + HEX.data (HEX: the name in hex), requests.log (one JSON line each).

use strict;
use warnings;

use Digest::CRC;
use Digest::MD5;
use Fcntl qw(:flock SEEK_SET);
use File::Path qw(make_path);
use JSON::PP;
use MIME::Base64 qw(encode_base64);
use Time::HiRes qw(time sleep);

use CloudAuth::FakeGoogle;

our $Q = 256 * 1024;

use Encode ();

# state and answers are UTF-8 JSON; names are character strings inside
my $json = JSON::PP->new->utf8->canonical->allow_nonref;

sub rjson {
    my ($file) = @_;
    open my $fh, '<:raw', $file or return undef;
    local $/;
    return eval { $json->decode(<$fh>) };
}

sub wjson {
    my ($file, $data) = @_;
    open my $fh, '>:raw', "$file.$$" or die "$file: $!";
    print $fh $json->encode($data);
    close $fh;
    rename "$file.$$", $file or die "$file: $!";
}

sub hexname { unpack 'H*', Encode::encode_utf8($_[0]) }

# the test's side ----------------------------------------------------------

# start($t): the fake on port "gcs" of a CloudAuth::Test; returns its URL
sub start {
    my ($class, $t) = @_;

    my $dir = $t->dir;
    make_path("$dir/gcs/sessions", "$dir/gcs/objects");

    my $url = 'https://127.0.0.1:' . $t->port('gcs');

    $t->start_fake(gcs => tls => { cert => "$dir/server.crt",
                                   key => "$dir/server.key" },
        handler => handler(dir => $dir, url => $url));

    return $url;
}

sub faults {
    my ($class, $t, %f) = @_;
    CloudAuth::FakeGoogle::write_json($t->dir . '/gcs_faults.json', \%f);
    unlink $t->dir . '/gcs/fault_used';
}

sub requests {
    my ($class, $t) = @_;
    return CloudAuth::FakeGoogle::read_json_lines(
        $t->dir . '/gcs/requests.log');
}

sub clear_requests {
    my ($class, $t) = @_;
    unlink $t->dir . '/gcs/requests.log';
}

# object($t, BUCKET, NAME): {meta => resource, data => bytes} or undef
sub object {
    my ($class, $t, $bucket, $name) = @_;
    # NAME: UTF-8 bytes
    my $base = $t->dir . "/gcs/objects/$bucket/" . unpack('H*', $name);
    my $meta = rjson("$base.json") or return;
    open my $fh, '<:raw', "$base.data" or return;
    local $/;
    my $data = <$fh>;
    return { meta => $meta, data => $data // '' };
}

# every stored object: list of resources
sub objects {
    my ($class, $t) = @_;
    my @o;
    for my $f (glob $t->dir . '/gcs/objects/*/*.json') {
        push @o, rjson($f);
    }
    return @o;
}

# sessions: list of {id, state...}
sub sessions {
    my ($class, $t) = @_;
    my @s;
    for my $f (glob $t->dir . '/gcs/sessions/*.json') {
        my $s = rjson($f) or next;
        push @s, $s;
    }
    return @s;
}

# put an object there, as if uploaded before
sub put_object {
    my ($class, $t, $bucket, $name, $data) = @_;
    $name = Encode::decode_utf8($name);
    store_object($t->dir, { bucket => $bucket, name => $name,
                            contentType => 'application/octet-stream',
                            metadata => {} }, $data);
}

sub crc32c {
    my $c = Digest::CRC->new(width => 32, init => 0xffffffff,
                             xorout => 0xffffffff, refout => 1,
                             poly => 0x1EDC6F41, refin => 1, cont => 0);
    $c->add($_[0]);
    return $c->digest;
}

sub crc32c_b64 { encode_base64(pack('N', crc32c($_[0])), '') }
sub md5_b64 { encode_base64(Digest::MD5::md5($_[0]), '') }

# the server's side --------------------------------------------------------

sub handler {
    my (%o) = @_;

    return sub {
        my ($req, $conn) = @_;

        my %rec = (time => time, pid => $$, peer => $conn->{peer},
                   method => $req->{method}, uri => $req->{uri},
                   content_range => $req->{headers}{'content-range'},
                   length => length $req->{body},
                   hash => $req->{headers}{'x-goog-hash'},
                   auth => $req->{headers}{authorization} ? 1 : 0);

        my $res = eval { dispatch($req, \%o, \%rec) }
            // { status => 500, body => "fake gcs: $@" };

        $rec{status} = $res->{drop} ? 'drop' : $res->{status};
        $rec{error} = $res->{error} if $res->{error};
        CloudAuth::FakeGoogle::append_json("$o{dir}/gcs/requests.log", \%rec);

        return $res;
    };
}

sub error {
    my ($status, $msg) = @_;
    return { status => $status, error => $msg,
             headers => { 'Content-Type' => 'application/json' },
             body => $json->encode({ error => { code => $status,
                                                message => $msg,
                                                errors => [{
                                                    message => $msg }] } }) };
}

sub uri_unescape {
    my ($s) = @_;
    $s =~ tr/+/ /;
    $s =~ s/%([0-9A-Fa-f]{2})/chr hex $1/ge;
    return $s;
}

sub query {
    my ($uri) = @_;
    my ($q) = $uri =~ /\?(.*)$/ or return {};
    my %q;
    for (split /&/, $q) {
        my ($k, $v) = split /=/, $_, 2;
        $q{ uri_unescape($k) } = uri_unescape($v // '');
    }
    return \%q;
}

sub issued {
    my ($dir, $auth) = @_;
    my ($token) = ($auth // '') =~ /^Bearer (\S+)$/ or return 0;
    for (CloudAuth::FakeGoogle::read_json_lines("$dir/fake_token.log")) {
        return 1 if ($_->{token} // '') eq $token;
    }
    return 0;
}

sub check_name {
    my ($name) = @_;
    return 'object name is empty' if !length $name;
    return 'object name is too long' if length $name > 1024;
    return 'object name contains CR or LF' if $name =~ /[\r\n]/;
    return 'object name is not UTF-8'
        unless utf8::decode(my $copy = $name);
    return 'object name is . or ..' if $name eq '.' || $name eq '..';
    return 'object name is reserved'
        if $name =~ m{^\.well-known/acme-challenge/};
    return undef;
}

# the state's lock, held while the returned guard lives; taken once per
# process (flock() on a second descriptor of the same file would wait for
# the first: a deadlock)
my $LOCK;

sub lock_dir {
    my ($dir) = @_;
    return undef if $LOCK;
    open $LOCK, '>>', "$dir/gcs/lock" or die "lock: $!";
    flock $LOCK, LOCK_EX;
    return bless {}, 'CloudAuth::FakeGCS::Lock';
}

sub CloudAuth::FakeGCS::Lock::DESTROY {
    close $LOCK if $LOCK;
    undef $LOCK;
}

# a fault that fires once: true the first time it is asked for
sub once {
    my ($dir, $what) = @_;
    my $lock = lock_dir($dir);
    my $used = CloudAuth::FakeGoogle::read_json("$dir/gcs/fault_used") || {};
    return 0 if $used->{$what}++;
    CloudAuth::FakeGoogle::write_json("$dir/gcs/fault_used", $used);
    return 1;
}

sub counter {
    my ($dir, $what) = @_;
    my $lock = lock_dir($dir);
    my $used = CloudAuth::FakeGoogle::read_json("$dir/gcs/fault_used") || {};
    my $n = ++$used->{$what};
    CloudAuth::FakeGoogle::write_json("$dir/gcs/fault_used", $used);
    return $n;
}

sub dispatch {
    my ($req, $o, $rec) = @_;

    my $dir = $o->{dir};
    my $f = CloudAuth::FakeGoogle::read_json("$dir/gcs_faults.json") || {};
    my $q = query($req->{uri});

    if ($req->{method} eq 'POST'
        && $req->{path} =~ m{^/upload/storage/v1/b/([^/]+)/o$})
    {
        return init($req, $o, $f, uri_unescape($1), $q);
    }

    if ($req->{path} =~ m{^/upload/storage/v1/b/([^/]+)/o$}
        && defined $q->{upload_id})
    {
        my $id = $q->{upload_id};
        return error(404, 'No such upload session')
            unless $id =~ /^\w+$/ && -e "$dir/gcs/sessions/$id.json";

        return error(401, 'Invalid Credentials')
            if $req->{headers}{authorization}
               && !issued($dir, $req->{headers}{authorization});

        return cancel($dir, $id) if $req->{method} eq 'DELETE';
        sleep $f->{slow} if $f->{slow} && $req->{method} eq 'PUT';
        return chunk($req, $o, $f, $id) if $req->{method} eq 'PUT';
        return error(405, 'method not allowed');
    }

    return error(404, "Not Found: $req->{method} $req->{path}");
}

sub init {
    my ($req, $o, $f, $bucket, $q) = @_;

    my $dir = $o->{dir};

    return error(401, 'Invalid Credentials')
        unless issued($dir, $req->{headers}{authorization});
    return error(400, 'uploadType must be resumable')
        unless ($q->{uploadType} // '') eq 'resumable';

    if ($f->{init_status}
        && counter($dir, 'init') <= ($f->{init_times} // 1))
    {
        return error($f->{init_status},
                     $f->{error_message} // 'injected failure');
    }

    return error(404, 'The specified bucket does not exist.')
        if $bucket eq 'no-such-bucket';

    my $meta = {};
    if (length $req->{body}) {
        return error(400, 'metadata is not application/json')
            unless ($req->{headers}{'content-type'} // '')
                   =~ m{^application/json};
        $meta = eval { $json->decode($req->{body}) };
        return error(400, 'metadata is not JSON') unless ref $meta eq 'HASH';
    }

    # the query's name is percent-encoded UTF-8; JSON gives characters
    my $bytes = $q->{name} // Encode::encode_utf8($meta->{name} // '');
    my $err = check_name($bytes);
    return error(400, "Invalid object name: $err") if $err;

    my $name = Encode::decode_utf8($bytes);
    return error(400, 'object name differs in query and metadata')
        if defined $meta->{name} && $meta->{name} ne $name;

    if (defined $q->{ifGenerationMatch} && $q->{ifGenerationMatch} eq '0'
        && stored($dir, $bucket, $name))
    {
        return error(412, 'At least one of the pre-conditions you '
                          . 'specified did not hold.');
    }

    my $id = CloudAuth::FakeGoogle::random_hex(16);
    my $declared = $req->{headers}{'x-upload-content-length'};

    my %s = (id => $id, bucket => $bucket, name => $name,
             contentType => $req->{headers}{'x-upload-content-type'}
                            // $meta->{contentType}
                            // 'application/octet-stream',
             metadata => $meta->{metadata} || {},
             declared => $declared, persisted => 0, state => 'open',
             ifGenerationMatch => $q->{ifGenerationMatch},
             created => time);

    wjson("$dir/gcs/sessions/$id.json", \%s);
    open my $fh, '>', "$dir/gcs/sessions/$id.data" or die "$id: $!";
    close $fh;

    my $loc = ($f->{location} // $o->{url})
              . "/upload/storage/v1/b/$bucket/o?uploadType=resumable"
              . "&upload_id=$id";

    return { status => 200, headers => { Location => $loc,
                                         'X-GUploader-UploadID' => $id } };
}

sub stored {
    my ($dir, $bucket, $name) = @_;
    return -e "$dir/gcs/objects/$bucket/" . hexname($name) . '.json';
}

sub cancel {
    my ($dir, $id) = @_;

    my $lock = lock_dir($dir);
    my $s = rjson("$dir/gcs/sessions/$id.json");

    return error(404, 'No such upload session') if $s->{state} eq 'cancelled';

    $s->{state} = 'cancelled';
    $s->{persisted} = 0;
    wjson("$dir/gcs/sessions/$id.json", $s);
    truncate "$dir/gcs/sessions/$id.data", 0;

    return { status => 499 };
}

sub range_header {
    my ($n) = @_;
    return $n ? { Range => 'bytes=0-' . ($n - 1) } : {};
}

sub chunk {
    my ($req, $o, $f, $id) = @_;

    my $dir = $o->{dir};
    my $lock = lock_dir($dir);
    my $sf = "$dir/gcs/sessions/$id.json";
    my $s = rjson($sf);
    my $data = $req->{body};
    my $len = length $data;

    return error(404, 'upload session expired') if $f->{session_404};
    return error(410, 'upload session was cancelled')
        if $s->{state} eq 'cancelled';

    my $cr = $req->{headers}{'content-range'} // '';

    if ($s->{state} eq 'done') {
        return { status => 200, body => $json->encode($s->{object}),
                 headers => { 'Content-Type' => 'application/json' } }
            if $cr =~ m{^bytes \*/};
        return error(400, 'upload is already complete');
    }

    my ($first, $last, $total);

    if ($cr =~ m{^bytes \*/\*$}) {
        # a status query
        return error(400, 'a status query has a body') if $len;
        return error($f->{query_status}, 'injected failure')
            if $f->{query_status} && once($dir, 'query');
        return { status => 308, headers => range_header($s->{persisted}) };

    } elsif ($cr =~ m{^bytes \*/(\d+)$}) {
        $total = $1;
        return error(400, 'a chunk without a range has a body') if $len;

    } elsif ($cr =~ m{^bytes (\d+)-(\d+)/(\d+|\*)$}) {
        ($first, $last, $total) = ($1, $2, $3 eq '*' ? undef : $3);
        return error(400, "Content-Range $cr: last before first")
            if $last < $first;
        return error(400, "Content-Range $cr: "
                          . ($last - $first + 1) . " bytes, body $len")
            if $last - $first + 1 != $len;
        return error(400, "Content-Range $cr does not start at "
                          . "$s->{persisted}, the stored bytes")
            if $first != $s->{persisted};
        return error(400, "Content-Range $cr: beyond the total")
            if defined $total && $last >= $total;

    } else {
        return error(400, "bad Content-Range \"$cr\"");
    }

    my $final = defined $total
                && $s->{persisted} + $len == $total;

    return error(400, "the total $total differs from the declared "
                      . "$s->{declared}")
        if defined $total && defined $s->{declared}
           && $total != $s->{declared};

    return error(400, "the total $total is less than the stored bytes")
        if defined $total && $total < $s->{persisted} + $len;

    return error(400, "non-final chunk of $len bytes is not a multiple of "
                      . '256 KiB')
        if !$final && $len % $Q;

    sleep $f->{delay} if $f->{delay};

    # faults: keep a 256 KiB-multiple prefix and fail

    my $keep = $len;
    my $fault;

    for my $kind (qw(fail drop stall zero)) {
        my $at = $f->{"${kind}_after"} // next;
        next unless $s->{persisted} <= $at && $at < $s->{persisted} + $len
                    || ($len == 0 && $s->{persisted} == $at && $final);
        next unless once($dir, $kind);
        $keep = $kind eq 'zero' ? 0 : int(($at - $s->{persisted}) / $Q) * $Q;
        $fault = $kind;
        last;
    }

    if (!$fault && !$final && $f->{short} && $len > $Q) {
        $keep = $len - $Q;
    }

    my $kept = substr($data, 0, $keep);
    substr($kept, 0, 1) ^= "\x01" if $f->{corrupt} && $keep;

    if ($final && !$fault) {
        # the hashes are checked before anything of the final is kept
        return finish($o, $s, $sf, $kept, $req->{headers}{'x-goog-hash'});
    }

    if ($keep) {
        open my $fh, '>>:raw', "$dir/gcs/sessions/$id.data" or die "$!";
        print $fh $kept;
        close $fh;
        $s->{persisted} += $keep;
    }

    wjson($sf, $s);

    if ($fault) {
        return { drop => 1 } if $fault eq 'drop';
        return { drop => 1, delay => $f->{stall} // 5 } if $fault eq 'stall';
        return { status => 308, headers => range_header($s->{persisted}) }
            if $fault eq 'zero';
        return error($f->{fail_status} // 503,
                     $f->{error_message} // 'injected failure');
    }

    if (!$final) {
        return { status => 308, headers => range_header($s->{persisted}) };
    }

    return error(500, 'fake gcs: final chunk without a fault');
}

# the final chunk: check the hashes, store the object

sub finish {
    my ($o, $s, $sf, $last, $hash) = @_;

    my $dir = $o->{dir};

    open my $fh, '<:raw', "$dir/gcs/sessions/$s->{id}.data" or die "$!";
    local $/;
    my $all = (<$fh> // '') . $last;
    close $fh;

    my $crc = crc32c_b64($all);
    my $md5 = md5_b64($all);

    if (my $h = $hash) {
        my %h = map { split /=/, $_, 2 } split /,\s*/, $h;
        return error(400, "Provided CRC32C \"$h{crc32c}\" doesn't match "
                          . "calculated CRC32C \"$crc\".")
            if defined $h{crc32c} && $h{crc32c} ne $crc;
        return error(400, "Provided MD5 hash \"$h{md5}\" doesn't match "
                          . "calculated MD5 hash \"$md5\".")
            if defined $h{md5} && $h{md5} ne $md5;
    }

    if (defined $s->{ifGenerationMatch} && $s->{ifGenerationMatch} eq '0'
        && stored($dir, $s->{bucket}, $s->{name}))
    {
        return error(412, 'At least one of the pre-conditions you '
                          . 'specified did not hold.');
    }

    my $obj = store_object($dir, $s, $all);

    truncate "$dir/gcs/sessions/$s->{id}.data", 0;
    $s->{persisted} = length $all;
    $s->{state} = 'done';
    $s->{object} = $obj;
    wjson($sf, $s);

    return { status => 200, body => $json->encode($obj),
             headers => { 'Content-Type' => 'application/json' } };
}

sub store_object {
    my ($dir, $s, $data) = @_;

    my $gen = int(time * 1e6) . '';
    my $name = $s->{name};
    my $base = "$dir/gcs/objects/$s->{bucket}";
    make_path($base);
    $base .= '/' . hexname($name);

    (my $path = Encode::encode_utf8($name)) =~ s/([^A-Za-z0-9\-._~])/sprintf '%%%02X', ord $1/ge;

    my %obj = (
        kind => 'storage#object',
        id => "$s->{bucket}/$name/$gen",
        selfLink => "https://www.googleapis.com/storage/v1/b/$s->{bucket}"
                    . "/o/$path",
        name => $name,
        bucket => $s->{bucket},
        generation => $gen,
        metageneration => '1',
        contentType => $s->{contentType},
        size => length($data) . '',
        md5Hash => md5_b64($data),
        crc32c => crc32c_b64($data),
        etag => 'CAE=',
        timeCreated => CloudAuth::FakeGoogle::http_date(time),
        metadata => $s->{metadata} || {},
    );

    open my $fh, '>:raw', "$base.data" or die "$base: $!";
    print $fh $data;
    close $fh;

    wjson("$base.json", \%obj);

    return \%obj;
}

1;
