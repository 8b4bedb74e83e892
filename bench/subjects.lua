-- wrk -s bench/subjects.lua URL -- N
-- Each request for one of N subjects chosen at random, in an X-User
-- header (user00001@example.com ... userNNNNN@example.com, all of the same
-- length); N = 1 asks for the same subject every time with the same work.

local n = 1

function init(args)
    n = tonumber(args[1]) or 1
    math.randomseed(os.time())
end

function request()
    return wrk.format(nil, nil, {
        ["X-User"] = string.format("user%05d@example.com", math.random(n))
    })
end
